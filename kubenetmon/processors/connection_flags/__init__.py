"""``connection_flags`` processor: sets ``connectionFlags`` entries from rules in the config."""

from __future__ import annotations

from typing import Any

from kubenetmon.component import ProcessorFactory, Stability
from kubenetmon.hookspecs import hookimpl
from kubenetmon.processors.connection_flags.config import ConnectionFlagsConfig, FlagRule
from kubenetmon.processors.connection_flags.processor import ConnectionFlagsProcessor, merge_flags

__all__ = ["ConnectionFlagsConfig", "ConnectionFlagsProcessor", "FlagRule", "factory", "merge_flags"]

factory: ProcessorFactory[ConnectionFlagsConfig] = ProcessorFactory(
    type="connection_flags",
    config_model=ConnectionFlagsConfig,
    description="Sets connectionFlags entries (e.g. NAT_GATEWAY) from rules on CIDRs, ports, namespaces, pods, "
    "apps, connection class, direction and transport.",
    stability=Stability.ALPHA,
    create=ConnectionFlagsProcessor,
)


@hookimpl
def kubenetmon_register_processors() -> list[ProcessorFactory[Any]]:
    return [factory]
