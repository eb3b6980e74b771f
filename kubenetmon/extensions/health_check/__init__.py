"""``health_check`` extension: ``/live`` and ``/ready`` reflecting component state."""

from __future__ import annotations

from typing import Any

from kubenetmon.component import ExtensionFactory, Stability
from kubenetmon.extensions.health_check.config import HealthCheckConfig
from kubenetmon.extensions.health_check.extension import HealthCheck
from kubenetmon.hookspecs import hookimpl

__all__ = ["HealthCheck", "HealthCheckConfig", "factory"]

factory: ExtensionFactory[HealthCheckConfig] = ExtensionFactory(
    type="health_check",
    config_model=HealthCheckConfig,
    description="Serves /live and /ready from the real state of every component.",
    stability=Stability.BETA,
    create=HealthCheck,
)


@hookimpl
def kubenetmon_register_extensions() -> list[ExtensionFactory[Any]]:
    return [factory]
