"""Config of the ``conntrack`` receiver."""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Literal

from pydantic import Field, field_validator

from kubenetmon.component import ComponentConfig

__all__ = ["ConntrackConfig", "default_node_name"]


def default_node_name() -> str:
    """``NODE_NAME`` from the environment (the chart sets it from the downward API), else the hostname."""
    return os.environ.get("NODE_NAME") or socket.gethostname()


class ConntrackConfig(ComponentConfig):
    interval: float = Field(5.0, gt=0, description="Seconds between two conntrack dumps.")
    accounting: Literal["delta", "zero_on_dump"] = Field(
        "delta",
        description="delta: plain dumps, deltas computed here, DESTROY events for connections that end "
        "between dumps (exact). zero_on_dump: the original's IPCTNL_MSG_CT_GET_CTRZERO, which resets the "
        "kernel counters on every dump and loses ~0.2% of deltas in the kernel.",
    )
    node_name: str = Field(
        default_factory=default_node_name,
        description="The observing node written into every record; default: env NODE_NAME, else the hostname.",
    )
    netns: str | None = Field(
        None,
        description="Read the conntrack table of this named network namespace (/var/run/netns/<name>) "
        "or namespace path (/proc/<pid>/ns/net) instead of the process's own.",
    )
    events: bool = Field(
        True,
        description="Listen for DESTROY events (reliable mode) so connections ending between dumps are "
        "counted to the last byte. Only with accounting: delta.",
    )
    event_buffer_bytes: int = Field(
        64 << 20, ge=1 << 20, description="Receive buffer of the DESTROY-event socket (SO_RCVBUFFORCE)."
    )
    vanished_ttl: float = Field(
        120.0,
        gt=0,
        description="Seconds to keep the last counters of an entry that left the table without a DESTROY "
        "event yet; its event is still applied if it arrives within this time.",
    )
    checkpoint_path: str | None = Field(
        None,
        description="State file for exact restarts (a hostPath, best under /run: tmpfs). Without "
        "it, the first dump after a start only sets the baseline.",
    )
    configure_sysctls: bool = Field(
        True,
        description="Set net.netfilter.nf_conntrack_acct=1, nf_conntrack_events=1 and (accounting: delta) "
        "nf_conntrack_timestamp=1 at start; when false, a wrong value is an error that says what to run.",
    )
    skip_sanity_check: bool = Field(
        False, description="Skip the start-up check that conntrack reports non-zero counters."
    )
    uptime_wait: float = Field(
        300.0,
        ge=0,
        description="While the node's uptime is below this many seconds, a sanity check that sees only "
        "zero counters waits and retries (every 10 s) instead of failing.",
    )
    include_cidrs: list[str] = Field(
        default_factory=list,
        description="When set, only flows with at least one address (original or reply) in these networks.",
    )
    exclude_cidrs: list[str] = Field(
        default_factory=list,
        description="Flows with any address (original or reply) in these networks are dropped.",
    )

    @field_validator("include_cidrs", "exclude_cidrs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not a CIDR (like 10.0.0.0/8 or fd00::/8)") from None
        return values
