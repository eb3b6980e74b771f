"""Self-telemetry: Prometheus metrics and structured logs."""

from kubenetmon.telemetry.logs import configure_logging
from kubenetmon.telemetry.metrics import ComponentMetrics, MetricsServer

__all__ = ["ComponentMetrics", "MetricsServer", "configure_logging"]
