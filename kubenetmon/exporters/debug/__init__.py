"""``debug`` exporter: logs batches (counts, one line per flow, or every field)."""

from __future__ import annotations

from typing import Any

from kubenetmon.component import ExporterFactory, Stability
from kubenetmon.exporters.debug.config import DebugConfig
from kubenetmon.exporters.debug.exporter import DebugExporter
from kubenetmon.hookspecs import hookimpl

__all__ = ["DebugConfig", "DebugExporter", "factory"]

factory: ExporterFactory[DebugConfig] = ExporterFactory(
    type="debug",
    config_model=DebugConfig,
    description="Logs the batches it receives; for wiring and troubleshooting pipelines.",
    stability=Stability.BETA,
    create=DebugExporter,
)


@hookimpl
def kubenetmon_register_exporters() -> list[ExporterFactory[Any]]:
    return [factory]
