"""The ``connection_flags`` processor: sets ``flow.connection_flags`` from configured rules."""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Callable

import pytricia

from kubenetmon.component import BaseComponent, Consumer, CreateSettings
from kubenetmon.flows import Endpoint, Flow, FlowBatch
from kubenetmon.processors.connection_flags.config import ConnectionFlagsConfig, FlagRule, parse_port_range

__all__ = ["CompiledRule", "ConnectionFlagsProcessor"]

Check = Callable[[Flow], bool]


def _cidr_check(cidrs: tuple[str, ...], side: Callable[[Flow], Endpoint]) -> Check:
    # Two tries: pytricia compares bits only, so one trie would match IPv4 addresses against IPv6 prefixes.
    v4, v6 = pytricia.PyTricia(32), pytricia.PyTricia(128)
    for cidr in cidrs:
        (v6 if ":" in cidr else v4)[cidr] = True

    def check(flow: Flow) -> bool:
        address = side(flow).address
        try:
            return bool((v6 if ":" in address else v4).get(address))
        except ValueError:  # empty or not an address
            return False

    return check


def _port_check(ports: tuple[int | str, ...], side: Callable[[Flow], Endpoint]) -> Check:
    singles = frozenset(low for low, high in map(parse_port_range, ports) if low == high)
    ranges = [(low, high) for low, high in map(parse_port_range, ports) if low != high]

    def check(flow: Flow) -> bool:
        port = side(flow).port
        return port in singles or any(low <= port <= high for low, high in ranges)

    return check


def _glob_check(patterns: tuple[str, ...], field: str, side: Callable[[Flow], Endpoint]) -> Check:
    match = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)).match

    def check(flow: Flow) -> bool:
        return match(getattr(side(flow), field)) is not None

    return check


def _member_check(allowed: frozenset[str], attr: str) -> Check:
    def check(flow: Flow) -> bool:
        return getattr(flow, attr) in allowed

    return check


def _local(flow: Flow) -> Endpoint:
    return flow.local


def _remote(flow: Flow) -> Endpoint:
    return flow.remote


class CompiledRule:
    """A :class:`FlagRule` turned into checks; ``matches`` holds when every check does."""

    def __init__(self, rule: FlagRule) -> None:
        self.flag = rule.flag
        self.value = rule.value
        checks: list[Check] = []
        for prefix, side in (("local", _local), ("remote", _remote)):
            cidrs = getattr(rule, f"{prefix}_cidrs")
            if cidrs:
                checks.append(_cidr_check(cidrs, side))
            ports = getattr(rule, f"{prefix}_ports")
            if ports:
                checks.append(_port_check(ports, side))
            for key, field in (("namespaces", "namespace"), ("pods", "pod"), ("apps", "app")):
                patterns = getattr(rule, f"{prefix}_{key}")
                if patterns:
                    checks.append(_glob_check(patterns, field, side))
        for key, attr in (("connection_classes", "connection_class"), ("directions", "direction"),
                          ("transports", "transport")):
            allowed: frozenset[str] = frozenset(getattr(rule, key))
            if allowed:
                checks.append(_member_check(allowed, attr))
        self._checks = tuple(checks)

    def matches(self, flow: Flow) -> bool:
        return all(check(flow) for check in self._checks)


class ConnectionFlagsProcessor(BaseComponent):
    """For each flag, the first rule that matches a flow sets the flag's value on it."""

    def __init__(self, settings: CreateSettings, config: ConnectionFlagsConfig, consumer: Consumer) -> None:
        self._next = consumer
        self._false_when_unmatched = config.set_false_when_unmatched
        by_flag: dict[str, list[CompiledRule]] = {}
        for rule in config.all_rules():
            by_flag.setdefault(rule.flag, []).append(CompiledRule(rule))
        self._flags = tuple((flag, tuple(rules)) for flag, rules in by_flag.items())
        self._m_set = settings.metrics.counter(
            "connection_flags_set_total", "Flags set on flows, by flag and value.", ["flag", "value"]
        )

    def consume(self, batch: FlowBatch) -> None:
        counts: Counter[tuple[str, bool]] = Counter()
        for flow in batch.flows:
            for flag, rules in self._flags:
                for rule in rules:
                    if rule.matches(flow):
                        flow.connection_flags[flag] = rule.value
                        counts[(flag, rule.value)] += 1
                        break
                else:
                    if self._false_when_unmatched:
                        flow.connection_flags[flag] = False
                        counts[(flag, False)] += 1
        for (flag, value), n in counts.items():
            self._m_set.labels(flag=flag, value=str(value).lower()).inc(n)
        self._next.consume(batch)
