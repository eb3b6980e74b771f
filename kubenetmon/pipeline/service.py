"""Running a built graph: start in order, stop in reverse, drain within a deadline."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from types import FrameType

from prometheus_client import CollectorRegistry

from kubenetmon.component import Component, ComponentID, Extension
from kubenetmon.config.validate import Config
from kubenetmon.errors import ComponentStartError
from kubenetmon.pipeline.graph import Graph, Node, build_graph
from kubenetmon.plugins import ComponentRegistry
from kubenetmon.telemetry.metrics import ComponentMetrics, MetricsServer

__all__ = ["Service"]

log = logging.getLogger(__name__)


class Service:
    """The running collector: components, the metrics endpoint, and their lifecycle.

    It is also the :class:`~kubenetmon.component.Host` handed to components.
    """

    def __init__(
        self,
        config: Config,
        registry: ComponentRegistry,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.metrics_registry = metrics_registry or CollectorRegistry()
        self._metrics = ComponentMetrics(self.metrics_registry, "service")
        self._registry = registry
        self._graph: Graph | None = None
        self._started: list[Node] = []
        self._metrics_server: MetricsServer | None = None
        self._stop = threading.Event()
        self._shutdown_done = False
        self._lock = threading.Lock()
        self._start_complete = False

    # --- Host -----------------------------------------------------------------

    def get_extension(self, id: ComponentID) -> Extension | None:
        for node in self.graph.extensions:
            if node.id == id:
                return node.component
        return None

    def components(self) -> Mapping[str, Component]:
        return {f"{n.kind.value}/{n.label}": n.component for n in self.graph.all()}

    # --- status ----------------------------------------------------------------

    @property
    def graph(self) -> Graph:
        if self._graph is None:
            self._graph = self._build()
        return self._graph

    def is_ready(self) -> bool:
        """Ready when every component started and reports ready."""
        return self._start_complete and not self._stop.is_set() and all(
            n.component.is_ready() for n in self._started
        )

    def health(self) -> dict[str, str]:
        """Unhealthy components and why; empty when all are healthy."""
        problems = {}
        for node in self._started:
            reason = node.component.health()
            if reason:
                problems[node.describe()] = reason
        return problems

    # --- lifecycle -------------------------------------------------------------

    def _build(self) -> Graph:
        try:
            return build_graph(self.config, self._registry, self._metrics)
        except ComponentStartError:
            raise
        except Exception as exc:
            raise ComponentStartError(f"failed to create components: {exc}") from exc

    def start(self) -> None:
        """Start everything; on a failure, stop what started and raise naming the component."""
        graph = self.graph
        address = self.config.service.telemetry.metrics.address
        if address:
            self._metrics_server = MetricsServer(self.metrics_registry, address)
            try:
                self._metrics_server.start()
            except OSError as exc:
                self._metrics_server = None
                raise ComponentStartError(
                    f"cannot serve metrics on {address}: {exc}; change service::telemetry::metrics::address"
                ) from exc
        for node in graph.start_order():
            log.info("starting %s", node.describe())
            try:
                node.component.start(self)
            except Exception as exc:
                log.error("failed to start %s: %s", node.describe(), exc)
                self.shutdown()
                raise ComponentStartError(f"failed to start {node.describe()}: {exc}") from exc
            self._started.append(node)
        self._start_complete = True
        log.info("kubenetmon started: %d components", len(self._started))

    def shutdown(self) -> None:
        """Stop in reverse start order; each component gets the drain deadline. Idempotent."""
        with self._lock:
            if self._shutdown_done:
                return
            self._shutdown_done = True
        self._stop.set()
        timeout = self.config.service.shutdown_timeout
        for node in reversed(self._started):
            log.info("shutting down %s", node.describe())
            try:
                node.component.shutdown(timeout)
            except Exception:
                log.exception("error shutting down %s", node.describe())
        self._started.clear()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None
        log.info("kubenetmon stopped")

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Start, wait for SIGTERM/SIGINT (or :meth:`request_stop`), then shut down gracefully."""
        previous = {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            self._stop.set()

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            self.start()
            while not self._stop.wait(0.5):
                pass
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


