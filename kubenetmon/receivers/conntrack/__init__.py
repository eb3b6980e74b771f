"""``conntrack`` receiver: meters every TCP/UDP connection of a node from its conntrack table."""

from __future__ import annotations

from typing import Any

from kubenetmon.component import ReceiverFactory, Stability
from kubenetmon.hookspecs import hookimpl
from kubenetmon.receivers.conntrack.config import ConntrackConfig
from kubenetmon.receivers.conntrack.receiver import ConntrackReceiver, KernelSettingsError

__all__ = ["ConntrackConfig", "ConntrackReceiver", "KernelSettingsError", "factory"]

factory: ReceiverFactory[ConntrackConfig] = ReceiverFactory(
    type="conntrack",
    config_model=ConntrackConfig,
    description="Reads the kernel conntrack table over netlink (dumps + DESTROY events) and produces exact "
    "per-interval byte/packet deltas per connection.",
    stability=Stability.BETA,
    create=ConntrackReceiver,
)


@hookimpl
def kubenetmon_register_receivers() -> list[ReceiverFactory[Any]]:
    return [factory]
