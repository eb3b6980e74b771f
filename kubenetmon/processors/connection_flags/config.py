"""Config of the ``connection_flags`` processor: flag rules written in YAML, no code."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kubenetmon.component import ComponentConfig

__all__ = ["ConnectionFlagsConfig", "FlagRule", "parse_port_range"]

_FLAG_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_CONDITIONS = (
    "local_cidrs", "remote_cidrs", "local_ports", "remote_ports", "local_namespaces", "remote_namespaces",
    "local_pods", "remote_pods", "local_apps", "remote_apps", "connection_classes", "directions", "transports",
)

ConnectionClassName = Literal["INTRA_VPC", "INTRA_REGION", "INTER_REGION", "PUBLIC_INTERNET", "UNKNOWN"]


def parse_port_range(value: int | str) -> tuple[int, int]:
    """``443`` → (443, 443); ``"8000-8999"`` → (8000, 8999). ValueError with the reason otherwise."""
    if isinstance(value, int):
        low = high = value
    else:
        text = value.strip()
        first, sep, last = text.partition("-")
        try:
            low = int(first)
            high = int(last) if sep else low
        except ValueError:
            raise ValueError(f"{value!r} is not a port or a range like 8000-8999") from None
    if not 0 <= low <= high <= 65535:
        raise ValueError(f"{value!r} is not a port or a range within 0-65535 (low first)")
    return low, high


class FlagRule(BaseModel):
    """Sets ``flag`` to ``value`` on flows for which every given condition holds.

    A list condition holds when any of its items matches; conditions left
    empty are not checked. Names (namespaces, pods, apps) are shell globs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    flag: str = Field(description="The connectionFlags key to set, e.g. NAT_GATEWAY.")
    value: bool = Field(True, description="The value to set when the rule matches.")
    local_cidrs: tuple[str, ...] = Field((), description="The local address is in one of these CIDRs.")
    remote_cidrs: tuple[str, ...] = Field((), description="The remote address is in one of these CIDRs.")
    local_ports: tuple[int | str, ...] = Field((), description="Local port: numbers or ranges like 8000-8999.")
    remote_ports: tuple[int | str, ...] = Field((), description="Remote port: numbers or ranges like 8000-8999.")
    local_namespaces: tuple[str, ...] = Field((), description="Local pod's namespace (glob).")
    remote_namespaces: tuple[str, ...] = Field((), description="Remote pod's namespace (glob).")
    local_pods: tuple[str, ...] = Field((), description="Local pod name (glob, e.g. 'nat-*').")
    remote_pods: tuple[str, ...] = Field((), description="Remote pod name (glob).")
    local_apps: tuple[str, ...] = Field((), description="Local app label (glob).")
    remote_apps: tuple[str, ...] = Field((), description="Remote app label (glob).")
    connection_classes: tuple[ConnectionClassName, ...] = Field(
        (), description="The flow's connection_class (set by cloud_prefix, which must run first)."
    )
    directions: tuple[Literal["out", "in"], ...] = Field((), description="The flow's direction.")
    transports: tuple[Literal["tcp", "udp"], ...] = Field((), description="The flow's transport.")

    def conditions(self) -> list[str]:
        """The names of the conditions this rule checks."""
        return [name for name in _CONDITIONS if getattr(self, name)]


class ConnectionFlagsConfig(ComponentConfig):
    """Rules that set ``connection_flags`` entries."""

    rules: tuple[FlagRule, ...] = Field(
        (), description="Evaluated in order; for each flag the first matching rule sets its value."
    )
    flags: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Shorthand: flag name → remote CIDRs; each entry is the rule {flag, remote_cidrs}, "
        "tried after `rules`.",
    )
    set_false_when_unmatched: bool = Field(
        False, description="Set a rule's flag to false on flows that no rule for that flag matches."
    )

    def all_rules(self) -> list[FlagRule]:
        """``rules``, then one rule per ``flags`` entry."""
        return [*self.rules, *(FlagRule(flag=flag, remote_cidrs=cidrs) for flag, cidrs in self.flags.items())]

    @model_validator(mode="after")
    def _check_rules(self) -> ConnectionFlagsConfig:
        problems: list[str] = []
        for flag, cidrs in self.flags.items():
            if not cidrs:
                problems.append(f"flags.{flag}: give at least one remote CIDR")
            for j, cidr in enumerate(cidrs):
                try:
                    ipaddress.ip_network(cidr, strict=True)
                except ValueError as exc:
                    problems.append(f"flags.{flag}[{j}]: {cidr!r} is not a CIDR ({exc})")
        for i, rule in enumerate(self.rules):
            where = f"rules[{i}] (flag {rule.flag!r})"
            if not _FLAG_RE.match(rule.flag):
                problems.append(f"rules[{i}].flag: {rule.flag!r} must be a name of letters, digits, '_', '.', '-'")
            if not rule.conditions():
                problems.append(f"{where} has no condition and would match every flow; add at least one of "
                                f"{', '.join(_CONDITIONS)}")
            for key in ("local_cidrs", "remote_cidrs"):
                for j, cidr in enumerate(getattr(rule, key)):
                    try:
                        ipaddress.ip_network(cidr, strict=True)
                    except ValueError as exc:
                        problems.append(f"{where}: {key}[{j}] {cidr!r} is not a CIDR ({exc})")
            for key in ("local_ports", "remote_ports"):
                for j, port in enumerate(getattr(rule, key)):
                    try:
                        parse_port_range(port)
                    except ValueError as exc:
                        problems.append(f"{where}: {key}[{j}] {exc}")
        problems += [f"flags: {flag!r} must be a name of letters, digits, '_', '.', '-'"
                     for flag in self.flags if not _FLAG_RE.match(flag)]
        if problems:
            raise ValueError("; ".join(problems))
        return self
