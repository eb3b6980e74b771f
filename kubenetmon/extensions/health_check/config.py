from __future__ import annotations

from pydantic import Field

from kubenetmon.component import ComponentConfig


class HealthCheckConfig(ComponentConfig):
    endpoint: str = Field(
        "0.0.0.0:13133", pattern=r"^[^:]*:\d+$", description="host:port serving /live and /ready."
    )
