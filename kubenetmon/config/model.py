"""The ``service`` section: pipelines, extensions, telemetry and identity."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kubenetmon.identity import Identity

__all__ = ["LogsConfig", "MetricsConfig", "PipelineConfig", "ServiceConfig", "TelemetryConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineConfig(_Strict):
    receivers: list[str] = Field(description="Receiver ids feeding this pipeline (at least one).")
    processors: list[str] = Field(default_factory=list, description="Processor ids, applied in order.")
    exporters: list[str] = Field(description="Exporter ids receiving every batch (at least one).")


class MetricsConfig(_Strict):
    address: str = Field(
        "0.0.0.0:8883",
        description="host:port serving Prometheus /metrics; empty to disable.",
        pattern=r"^$|^[^:]*:\d+$",
    )


class LogsConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Minimum log level.")
    encoding: Literal["json", "console"] = Field("json", description="json lines or human-readable console.")


class TelemetryConfig(_Strict):
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logs: LogsConfig = Field(default_factory=LogsConfig)


class ServiceConfig(_Strict):
    extensions: list[str] = Field(default_factory=list, description="Extension ids to start.")
    pipelines: dict[str, PipelineConfig] = Field(description="Named pipelines, e.g. flows or flows/backup.")
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    identity: Identity = Field(
        default_factory=Identity,
        description="Local cloud, region, cluster, environment and cell, shared by all components.",
    )
    shutdown_timeout: float = Field(
        30.0, gt=0, description="Seconds each stage may take to drain and flush on shutdown."
    )
