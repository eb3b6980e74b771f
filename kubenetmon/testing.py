"""Test helpers for plugin authors (shipped, like httpx's MockTransport).

* :class:`SinkConsumer` collects batches a component produces.
* :func:`check_lifecycle` drives a component through the lifecycle contract
  (create → start → shutdown → shutdown, and shutdown without start).
* :func:`create_settings` builds the settings a factory expects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from kubenetmon.component import (
    Component,
    ComponentConfig,
    ComponentID,
    CreateSettings,
    Extension,
    Factory,
    Kind,
)
from kubenetmon.errors import BackpressureError
from kubenetmon.flows import Flow, FlowBatch
from kubenetmon.identity import Identity
from kubenetmon.telemetry.metrics import ComponentMetrics

__all__ = ["SinkConsumer", "StaticHost", "check_lifecycle", "create_component", "create_settings"]


class SinkConsumer:
    """Collects every batch; can push back on demand (``refuse = True``)."""

    def __init__(self) -> None:
        self.batches: list[FlowBatch] = []
        self.refuse = False
        self._cond = threading.Condition()

    def consume(self, batch: FlowBatch) -> None:
        if self.refuse:
            raise BackpressureError("sink is refusing (test)")
        with self._cond:
            self.batches.append(batch)
            self._cond.notify_all()

    @property
    def flows(self) -> list[Flow]:
        return [f for b in self.batches for f in b.flows]

    @property
    def records(self) -> list[Any]:
        return [r for b in self.batches for r in b.records]

    def wait_for(self, predicate: Callable[[SinkConsumer], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(self)`` holds; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))
        return True


class StaticHost:
    """A Host for tests: fixed components, no extensions."""

    def __init__(self, components: Mapping[str, Component] | None = None) -> None:
        self._components = dict(components or {})

    def get_extension(self, id: ComponentID) -> Extension | None:
        return None

    def components(self) -> Mapping[str, Component]:
        return self._components


def create_settings(
    kind: Kind,
    id_: str | ComponentID,
    *,
    identity: Identity | None = None,
    registry: CollectorRegistry | None = None,
) -> CreateSettings:
    cid = id_ if isinstance(id_, ComponentID) else ComponentID.parse(id_)
    return CreateSettings(
        id=cid,
        kind=kind,
        identity=identity or Identity(),
        metrics=ComponentMetrics(registry or CollectorRegistry(), str(cid)),
        logger=logging.getLogger(f"kubenetmon.test.{cid}"),
    )


def create_component(
    factory: Factory[Any],
    config: ComponentConfig | None = None,
    *,
    consumer: Any = None,
    settings: CreateSettings | None = None,
) -> Any:
    """Create a component of any kind from its factory (default config unless given)."""
    config = config if config is not None else factory.default_config()
    settings = settings or create_settings(factory.kind, factory.type)
    if factory.kind in (Kind.RECEIVER, Kind.PROCESSOR):
        return factory.create(settings, config, consumer if consumer is not None else SinkConsumer())  # type: ignore[attr-defined]
    return factory.create(settings, config)  # type: ignore[attr-defined]


def check_lifecycle(component: Component, host: StaticHost | None = None, timeout: float = 10.0) -> None:
    """Assert the lifecycle contract: start returns, shutdown twice is fine.

    Raises AssertionError naming the broken rule.
    """
    host = host or StaticHost()
    started = time.monotonic()
    component.start(host)
    took = time.monotonic() - started
    assert took < timeout, f"start() took {took:.1f}s; it must return quickly and do background work in threads"
    assert component.health() is None, f"unhealthy right after start: {component.health()}"
    component.shutdown(timeout)
    component.shutdown(timeout)  # idempotent
