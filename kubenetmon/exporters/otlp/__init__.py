"""``otlp`` exporter: OTLP/gRPC metrics, agent → gateway (§4.1) and gateway → any backend (§4.4)."""

from __future__ import annotations

from typing import Any

from kubenetmon.component import ExporterFactory, Stability
from kubenetmon.exporters.otlp.config import ClientTLSConfig, OtlpExporterConfig
from kubenetmon.exporters.otlp.exporter import OtlpExporter
from kubenetmon.hookspecs import hookimpl

__all__ = ["ClientTLSConfig", "OtlpExporter", "OtlpExporterConfig", "factory"]

factory: ExporterFactory[OtlpExporterConfig] = ExporterFactory(
    type="otlp",
    config_model=OtlpExporterConfig,
    description="Sends conntrack records (agent → gateway) or attributed flows (→ any OTLP backend) "
    "as OTLP/gRPC metrics, with a queue, retries and per-batch idempotency keys.",
    stability=Stability.ALPHA,
    create=OtlpExporter,
)


@hookimpl
def kubenetmon_register_exporters() -> list[ExporterFactory[Any]]:
    return [factory]
