"""Configuration: YAML files in the OpenTelemetry Collector layout, validated as a whole."""

from kubenetmon.config.loader import expand_env, load_files, merge
from kubenetmon.config.model import PipelineConfig, ServiceConfig, TelemetryConfig
from kubenetmon.config.validate import Config, validate

__all__ = [
    "Config",
    "PipelineConfig",
    "ServiceConfig",
    "TelemetryConfig",
    "expand_env",
    "load_files",
    "merge",
    "validate",
]
