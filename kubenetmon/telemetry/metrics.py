"""Prometheus self-metrics, labelled by component.

Several instances of one component type (``clickhouse/a``, ``clickhouse/b``)
share one metric family and differ by the ``component`` label, as Prometheus
expects. :class:`ComponentMetrics` hides that: a component asks for a metric
by name and gets one already bound to its own id.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from http.server import ThreadingHTTPServer
from typing import Any, Generic, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import make_wsgi_app

__all__ = ["BoundMetric", "ComponentMetrics", "MetricsServer"]

M = TypeVar("M", Counter, Gauge, Histogram)


class BoundMetric(Generic[M]):
    """A metric family with the ``component`` label already filled in.

    ``labels(reason="x")`` fills the remaining labels; with no extra labels
    the bound child is used directly (``.inc()``, ``.set()``, ``.observe()``).
    """

    def __init__(self, family: M, component: str, extra: Sequence[str]) -> None:
        self._family: M = family
        self._component = component
        self._extra = tuple(extra)
        self._plain: Any = None if extra else family.labels(component=component)

    def labels(self, **values: str) -> Any:
        if set(values) != set(self._extra):
            raise ValueError(f"expected labels {self._extra}, got {tuple(values)}")
        return self._family.labels(component=self._component, **values)

    def _child(self) -> Any:
        if self._plain is None:
            raise ValueError(f"metric needs labels {self._extra}; call .labels(...) first")
        return self._plain

    def inc(self, amount: float = 1) -> None:
        self._child().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._child().dec(amount)

    def set(self, value: float) -> None:
        self._child().set(value)

    def observe(self, value: float) -> None:
        self._child().observe(value)

    def value(self, **values: str) -> float:
        """Current value (counters and gauges); for tests and status pages."""
        child = self.labels(**values) if values else self._child()
        return float(child._value.get())


class ComponentMetrics:
    """Get-or-create access to metric families in one registry, bound to one component."""

    _lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry, component: str, prefix: str = "kubenetmon_") -> None:
        self.registry = registry
        self.component = component
        self._prefix = prefix

    def for_component(self, component: str) -> ComponentMetrics:
        return ComponentMetrics(self.registry, component, self._prefix)

    def _family(self, cls: type[M], name: str, doc: str, labels: Sequence[str], **kw: Any) -> M:
        full = name if name.startswith(self._prefix) else self._prefix + name
        families: dict[str, Any] = self.registry.__dict__.setdefault("_kubenetmon_families", {})
        with self._lock:
            family = families.get(full)
            if family is None:
                family = cls(full, doc, ["component", *labels], registry=self.registry, **kw)
                families[full] = family
            elif not isinstance(family, cls):
                raise ValueError(f"metric {full} already registered as {type(family).__name__}")
        return family  # type: ignore[no-any-return,unused-ignore]

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> BoundMetric[Counter]:
        return BoundMetric(self._family(Counter, name, doc, labels), self.component, labels)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> BoundMetric[Gauge]:
        return BoundMetric(self._family(Gauge, name, doc, labels), self.component, labels)

    def histogram(
        self, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] | None = None
    ) -> BoundMetric[Histogram]:
        kw: dict[str, Any] = {"buckets": tuple(buckets)} if buckets else {}
        return BoundMetric(self._family(Histogram, name, doc, labels, **kw), self.component, labels)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


class _ThreadingWSGIServer(ThreadingHTTPServer, WSGIServer):
    daemon_threads = True


class MetricsServer:
    """Serves ``/metrics`` for one registry on ``host:port`` in a daemon thread."""

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._host = host or "0.0.0.0"
        self._port = int(port)
        self._registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_port if self._server else self._port

    def start(self) -> None:
        app = make_wsgi_app(self._registry)
        self._server = make_server(
            self._host, self._port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
