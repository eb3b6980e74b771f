"""The ``kubernetes`` source: list + watch of pods, nodes (and ReplicaSets) into the index.

One thread per resource runs a reflector loop, written here rather than with
``kubernetes.watch.Watch`` because that helper neither catches urllib3's
``ProtocolError``/``ReadTimeoutError`` nor re-lists after 410 Gone
(DESIGN §6):

1. **List** in pages (``limit``/``continue``) with ``_preload_content=False``
   and ``json.loads`` of the raw body — the client's model deserialisation is
   far slower at tens of thousands of pods (see ``bench/``). The index is
   replaced only once the whole list has arrived.
2. **Watch** from the list's resourceVersion with ``allowWatchBookmarks``,
   a server-side ``timeoutSeconds`` and a client read timeout. Each event and
   bookmark advances the resourceVersion.
3. A watch that ends (timeout) or breaks (dropped connection, read timeout,
   any urllib3/HTTP error) is **resumed** from the last resourceVersion,
   without a re-list, after a backoff for errors.
4. **410 Gone** (an ``ERROR`` event with a 410 Status, or HTTP 410 on list or
   watch) means the resourceVersion was compacted away: re-list, which also
   catches every change made meanwhile.

``is_ready()`` turns true after the first full list of every resource.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubenetmon.processors.k8s_attributes.config import KubernetesSourceConfig
from kubenetmon.processors.k8s_attributes.index import ClusterIndex, ObjectParser
from kubenetmon.telemetry.metrics import ComponentMetrics

__all__ = ["KubernetesSource", "make_api_client"]


def make_api_client(config: KubernetesSourceConfig) -> Any:
    """An ``ApiClient`` from the kubeconfig, the in-cluster account, or the default kubeconfig."""
    from kubernetes import client
    from kubernetes import config as kube_config

    context = config.context or None
    if config.kubeconfig:
        return kube_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=config.kubeconfig, context=context
        )
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    return kube_config.new_client_from_config(context=context)  # type: ignore[no-untyped-call]


class _Expired(Exception):
    """The resourceVersion we hold is too old (410 Gone): re-list."""


class _WatchError(Exception):
    """The server ended a watch with an ERROR event other than 410."""


@dataclass
class _Resource:
    """How one resource is listed, watched and applied to the index."""

    name: str
    list_fn: Callable[..., Any]
    parse: Callable[[dict[str, Any]], Any]  # API object -> what replace() takes
    replace: Callable[[list[Any]], None]  # the full, parsed list
    upsert: Callable[[dict[str, Any]], None]
    delete: Callable[[dict[str, Any]], None]
    field_selector: str = ""


def _reason(exc: BaseException) -> str:
    """A short, bounded label for a failure (metrics and logs)."""
    name = type(exc).__name__
    status = getattr(exc, "status", None)
    if name == "ApiException":
        return f"http_{status}"
    return {
        "ProtocolError": "protocol_error",
        "ReadTimeoutError": "read_timeout",
        "ConnectTimeoutError": "connect_timeout",
        "MaxRetryError": "connection_error",
        "NewConnectionError": "connection_error",
        "_WatchError": "watch_error",
        "JSONDecodeError": "bad_json",
    }.get(name, "other")


class _Reflector:
    """List, then watch and resume, one resource; see the module docstring."""

    def __init__(
        self,
        resource: _Resource,
        config: KubernetesSourceConfig,
        logger: logging.Logger,
        metrics: dict[str, Any],
        stop: threading.Event,
    ) -> None:
        self.resource = resource
        self._cfg = config
        self._log = logger
        self._stop = stop
        self.synced = threading.Event()
        # Where the next watch resumes: advanced by every event and bookmark, so
        # that a broken stream resumes after the last change seen; None = re-list.
        self.rv: str | None = None
        self.died: str | None = None
        self.last_event = time.monotonic()
        self._resp_lock = threading.Lock()
        self._resp: Any = None
        name = resource.name
        self._m_restarts = metrics["restarts"]
        self._m_relists = metrics["relists"].labels(resource=name)
        self._m_events = metrics["events"]
        self._m_errors = metrics["errors"]
        metrics["since_event"].labels(resource=name).set_function(lambda: time.monotonic() - self.last_event)
        self.thread = threading.Thread(target=self._run, name=f"k8s_attributes-{name}", daemon=True)

    # ------------------------------------------------------------------ loop

    def _run(self) -> None:
        backoff = self._cfg.backoff_initial
        listed = False
        try:
            while not self._stop.is_set():
                rv = self.rv
                try:
                    if rv is None:
                        if listed:
                            self._m_relists.inc()
                        self.rv = rv = self._list()
                        listed = True
                        self.synced.set()
                    self._watch(rv)
                    self._m_restarts.labels(resource=self.resource.name, reason="timeout").inc()
                    backoff = self._cfg.backoff_initial
                except _Expired:
                    self._m_restarts.labels(resource=self.resource.name, reason="expired").inc()
                    self._log.info("%s: resourceVersion %s expired (410 Gone); re-listing", self.resource.name, rv)
                    self.rv = None
                except Exception as exc:
                    if self._stop.is_set():
                        break
                    reason = _reason(exc)
                    if reason == "http_410":
                        self._m_restarts.labels(resource=self.resource.name, reason="expired").inc()
                        self._log.info("%s: HTTP 410 Gone; re-listing", self.resource.name)
                        self.rv = None
                        continue
                    self._m_restarts.labels(resource=self.resource.name, reason=reason).inc()
                    if reason == "read_timeout" and rv is not None:
                        # A quiet watch (no events, no bookmarks) looks the same as a
                        # stalled one: resume at once, it costs one request.
                        self._log.debug("%s: watch idle for %.0fs; resuming", self.resource.name,
                                        self._cfg.read_timeout)
                        continue
                    self._log.warning(
                        "%s: %s failed (%s: %s); retrying in %.1fs from resourceVersion %s",
                        self.resource.name, "watch" if rv else "list", type(exc).__name__, exc, backoff, self.rv,
                    )
                    self._stop.wait(backoff * (0.5 + random.random() / 2))
                    backoff = min(backoff * 2, self._cfg.backoff_max)
        except BaseException as exc:  # a bug: report through health() rather than die silently
            self.died = f"{self.resource.name} watcher died: {type(exc).__name__}: {exc}"
            self._log.exception("%s watcher died", self.resource.name)

    # ------------------------------------------------------------------ list

    def _list(self) -> str:
        cfg = self._cfg
        # Parse page by page so that raw JSON of only one page is alive at a time.
        items: list[Any] = []
        parse = self.resource.parse
        token: str | None = None
        rv = ""
        while True:
            resp = self.resource.list_fn(
                limit=cfg.page_size,
                _continue=token,
                field_selector=self.resource.field_selector or None,
                _preload_content=False,
                _request_timeout=(cfg.connect_timeout, cfg.list_timeout),
            )
            self._set_resp(resp)
            try:
                body = json.loads(resp.data)
            finally:
                self._set_resp(None)
                resp.release_conn()
            for obj in body.get("items") or ():
                try:
                    items.append(parse(obj))
                except (KeyError, TypeError, AttributeError, ValueError) as exc:
                    self._m_errors.labels(resource=self.resource.name).inc()
                    self._log.warning("%s: skipping malformed object: %r", self.resource.name, exc)
            meta = body.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or "")
            token = meta.get("continue") or None
            del body
            if self._stop.is_set():
                raise InterruptedError("stopping")
            if token is None:
                break
        self.resource.replace(items)
        self.last_event = time.monotonic()
        self._log.info("%s: listed %d at resourceVersion %s", self.resource.name, len(items), rv)
        return rv

    # ------------------------------------------------------------------ watch

    def _watch(self, rv: str) -> None:
        cfg = self._cfg
        resp = self.resource.list_fn(
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=cfg.watch_timeout,
            field_selector=self.resource.field_selector or None,
            _preload_content=False,
            _request_timeout=(cfg.connect_timeout, cfg.read_timeout),
        )
        self._set_resp(resp)
        upsert, delete = self.resource.upsert, self.resource.delete
        events = self._m_events
        name = self.resource.name
        buffer = b""
        try:
            for chunk in resp.stream(amt=None, decode_content=False):
                buffer += chunk
                if b"\n" not in buffer:
                    continue
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    type_ = event.get("type")
                    obj = event.get("object") or {}
                    if type_ == "ERROR":
                        if obj.get("code") == 410:
                            raise _Expired()
                        raise _WatchError(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
                    new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if type_ != "BOOKMARK":
                        try:
                            if type_ == "DELETED":
                                delete(obj)
                            else:
                                upsert(obj)
                        except (KeyError, TypeError, AttributeError, ValueError) as exc:
                            self._m_errors.labels(resource=name).inc()
                            self._log.warning("%s: skipping malformed %s event: %r", name, type_, exc)
                    events.labels(resource=name, type=str(type_)).inc()
                    if new_rv:
                        self.rv = str(new_rv)
                    self.last_event = time.monotonic()
                if self._stop.is_set():
                    break
        finally:
            self._set_resp(None)
            resp.release_conn()

    # ------------------------------------------------------------------ stopping

    def _set_resp(self, resp: Any) -> None:
        with self._resp_lock:
            self._resp = resp
        if resp is not None and self._stop.is_set():
            self.interrupt()

    def interrupt(self) -> None:
        """Unblock a thread waiting on the socket (shutdown, not close: close from another
        thread can deadlock on the reader's locks)."""
        with self._resp_lock:
            resp = self._resp
        if resp is None:
            return
        try:
            sock = getattr(getattr(resp, "connection", None), "sock", None)
            if sock is not None:
                import socket

                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class KubernetesSource:
    """Runs one reflector per resource (pods, nodes, and ReplicaSets when ``owners``)."""

    def __init__(
        self,
        config: KubernetesSourceConfig,
        index: ClusterIndex,
        parser: ObjectParser,
        logger: logging.Logger,
        metrics: ComponentMetrics,
        *,
        owners: bool = False,
        api_client_factory: Callable[[KubernetesSourceConfig], Any] = make_api_client,
    ) -> None:
        self._cfg = config
        self._index = index
        self._parser = parser
        self._log = logger
        self._owners = owners
        self._factory = api_client_factory
        self._stop = threading.Event()
        self._api_client: Any = None
        self._reflectors: list[_Reflector] = []
        self._metrics = {
            "restarts": metrics.counter(
                "k8s_attributes_watch_restarts_total",
                "Watches ended and resumed, by resource and reason (timeout, expired, protocol_error…).",
                ["resource", "reason"],
            ),
            "relists": metrics.counter(
                "k8s_attributes_relists_total", "Full re-lists after the first (410 Gone).", ["resource"]
            ),
            "events": metrics.counter(
                "k8s_attributes_watch_events_total", "Watch events received, by type.", ["resource", "type"]
            ),
            "errors": metrics.counter(
                "k8s_attributes_malformed_objects_total", "API objects skipped as malformed.", ["resource"]
            ),
            "since_event": metrics.gauge(
                "k8s_attributes_seconds_since_last_event",
                "Seconds since the last list, watch event or bookmark, by resource.",
                ["resource"],
            ),
        }

    def _resources(self, api_client: Any) -> list[_Resource]:
        from kubernetes import client

        core = client.CoreV1Api(api_client)
        index, parser = self._index, self._parser
        resources = [
            _Resource(
                "nodes", core.list_node, parse=parser.node, replace=index.replace_nodes,
                upsert=lambda o: index.upsert_node(parser.node(o)),
                delete=lambda o: index.remove_node(o["metadata"]["name"]),
            ),
            _Resource(
                "pods", core.list_pod_for_all_namespaces, parse=parser.pod, replace=index.replace_pods,
                upsert=lambda o: index.upsert_pod(parser.pod(o)),
                delete=lambda o: index.remove_pod(parser.key(o)),
                field_selector=self._cfg.pod_field_selector,
            ),
        ]
        if self._owners:
            apps = client.AppsV1Api(api_client)
            resources.append(_Resource(
                "replicasets", apps.list_replica_set_for_all_namespaces,
                parse=parser.replicaset, replace=index.replace_replicasets,
                upsert=lambda o: index.upsert_replicaset(*parser.replicaset(o)),
                delete=lambda o: index.remove_replicaset(parser.key(o)),
            ))
        return resources

    def start(self) -> None:
        self._api_client = self._factory(self._cfg)
        for resource in self._resources(self._api_client):
            reflector = _Reflector(resource, self._cfg, self._log, self._metrics, self._stop)
            self._reflectors.append(reflector)
            reflector.thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        for reflector in self._reflectors:
            reflector.interrupt()
        deadline = time.monotonic() + timeout
        for reflector in self._reflectors:
            reflector.thread.join(max(0.0, deadline - time.monotonic()))
        if self._api_client is not None:
            try:
                self._api_client.close()
            except Exception:  # closing a pool must not fail shutdown
                self._log.debug("closing the API client failed", exc_info=True)
            self._api_client = None

    def is_ready(self) -> bool:
        return bool(self._reflectors) and all(r.synced.is_set() for r in self._reflectors)

    def health(self) -> str | None:
        for reflector in self._reflectors:
            if reflector.died:
                return reflector.died
        return None
