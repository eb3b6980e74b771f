"""The ``static`` source: nodes and pods from a YAML inventory file, reloaded on change.

For a single machine without Kubernetes, for tests, and for hosts outside a
cluster. The format is documented in the README; each entry is either the
short form (``name``, ``node``, ``ips``, ``labels``…) or a Kubernetes object
(``kind``/``metadata``…, e.g. the output of ``kubectl get pods -o yaml``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kubenetmon.errors import KubenetmonError
from kubenetmon.processors.k8s_attributes.index import ClusterIndex, NodeInfo, ObjectParser, PodInfo
from kubenetmon.telemetry.metrics import ComponentMetrics

T = TypeVar("T")

__all__ = ["InventoryError", "StaticSource", "load_inventory"]

_POD_KEYS = {"name", "namespace", "node", "ip", "ips", "labels", "phase", "host_network", "created", "owner"}
_NODE_KEYS = {"name", "addresses", "zone", "labels"}
_RS_KEYS = {"name", "namespace", "owner"}


class InventoryError(KubenetmonError):
    """The inventory file cannot be read or is malformed; the message says where."""


def _owner_refs(entry: dict[str, Any], where: str) -> list[dict[str, Any]]:
    owner = entry.get("owner")
    if owner is None:
        return []
    if not isinstance(owner, dict) or not owner.get("kind") or not owner.get("name"):
        raise InventoryError(f"{where}: owner must be a mapping with 'kind' and 'name', got {owner!r}")
    return [{"kind": str(owner["kind"]), "name": str(owner["name"]), "controller": True}]


def _check_short(entry: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise InventoryError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    if not entry.get("name"):
        raise InventoryError(f"{where}: 'name' is required")


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise InventoryError(f"{where}: expected a list of addresses, got {value!r}")
    return [str(v) for v in value]


def _pod_object(entry: dict[str, Any], where: str) -> dict[str, Any]:
    if "metadata" in entry:
        return entry
    _check_short(entry, _POD_KEYS, where)
    ips = _str_list(entry.get("ip"), where + ".ip") + _str_list(entry.get("ips"), where + ".ips")
    status: dict[str, Any] = {"phase": str(entry.get("phase") or "Running"), "podIPs": [{"ip": i} for i in ips]}
    return {
        "metadata": {
            "name": str(entry["name"]), "namespace": str(entry.get("namespace") or "default"),
            "labels": dict(entry.get("labels") or {}), "creationTimestamp": str(entry.get("created") or ""),
            "ownerReferences": _owner_refs(entry, where),
        },
        "spec": {"nodeName": str(entry.get("node") or ""), "hostNetwork": bool(entry.get("host_network"))},
        "status": status,
    }


def _node_object(entry: dict[str, Any], where: str) -> dict[str, Any]:
    if "metadata" in entry:
        return entry
    _check_short(entry, _NODE_KEYS, where)
    labels = dict(entry.get("labels") or {})
    if entry.get("zone"):
        labels["topology.kubernetes.io/zone"] = str(entry["zone"])
    addresses = [{"type": "InternalIP", "address": a} for a in _str_list(entry.get("addresses"), where)]
    return {"metadata": {"name": str(entry["name"]), "labels": labels}, "status": {"addresses": addresses}}


def load_inventory(
    path: str | Path, parser: ObjectParser
) -> tuple[list[PodInfo], list[NodeInfo], list[tuple[str, tuple[str, str] | None]]]:
    """Parse an inventory file; raise :class:`InventoryError` naming the entry at fault."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InventoryError(f"cannot read static inventory {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise InventoryError(f"static inventory {path} is not valid YAML: {exc}") from exc
    doc = doc or {}
    if not isinstance(doc, dict):
        raise InventoryError(f"static inventory {path}: the top level must be a mapping with nodes: and pods:")
    unknown = sorted(set(doc) - {"nodes", "pods", "replicasets", "items", "apiVersion", "kind", "metadata"})
    if unknown:
        raise InventoryError(f"static inventory {path}: unknown top-level key(s) {', '.join(unknown)}; "
                             "expected nodes, pods, replicasets or items")
    sections: dict[str, list[tuple[str, Any]]] = {"nodes": [], "pods": [], "replicasets": []}
    for name in sections:
        entries = doc.get(name) or []
        if not isinstance(entries, list):
            raise InventoryError(f"static inventory {path}: {name} must be a list")
        sections[name] += [(f"{name}[{i}]", e) for i, e in enumerate(entries)]
    kinds = {"Pod": "pods", "Node": "nodes", "ReplicaSet": "replicasets"}
    for i, item in enumerate(doc.get("items") or []):  # a kubectl List
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind not in kinds:
            raise InventoryError(f"static inventory {path}: items[{i}] has kind {kind!r}; "
                                 "only Pod, Node and ReplicaSet are understood")
        sections[kinds[kind]].append((f"items[{i}]", item))
    def replicaset(entry: dict[str, Any], where: str) -> tuple[str, tuple[str, str] | None]:
        rs = entry
        if "metadata" not in entry:
            _check_short(entry, _RS_KEYS, where)
            rs = {"metadata": {"name": entry["name"], "namespace": entry.get("namespace") or "default",
                               "ownerReferences": _owner_refs(entry, where)}}
        return parser.replicaset(rs)

    pods = _parse_each(path, sections["pods"], "pod", lambda e, w: parser.pod(_pod_object(e, w)))
    nodes = _parse_each(path, sections["nodes"], "node", lambda e, w: parser.node(_node_object(e, w)))
    replicasets = _parse_each(path, sections["replicasets"], "replicaset", replicaset)
    return pods, nodes, replicasets


def _parse_each(
    path: str | Path, entries: list[tuple[str, Any]], what: str, parse: Callable[[dict[str, Any], str], T]
) -> list[T]:
    """Parse every entry of one inventory section; errors name the file, the entry and what is wrong."""
    parsed: list[T] = []
    for place, entry in entries:
        where = f"static inventory {path}: {place}"
        if not isinstance(entry, dict):
            raise InventoryError(f"{where}: expected a mapping, got {entry!r}")
        try:
            parsed.append(parse(entry, where))
        except (KeyError, TypeError, AttributeError) as exc:
            raise InventoryError(f"{where}: malformed {what} ({exc!r})") from exc
    return parsed


class StaticSource:
    """Loads the inventory at start (failing start if it is bad), then polls its mtime."""

    def __init__(
        self,
        *,
        path: str,
        poll_interval: float,
        index: ClusterIndex,
        parser: ObjectParser,
        logger: logging.Logger,
        metrics: ComponentMetrics,
    ) -> None:
        self._path = path
        self._poll = poll_interval
        self._index = index
        self._parser = parser
        self._log = logger
        self._reloads = metrics.counter(
            "k8s_attributes_static_reloads_total", "Loads of the static inventory file, by result.", ["result"]
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stamp: tuple[int, int] | None = None
        self._ready = False

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def load(self) -> None:
        """Load the file now (raises :class:`InventoryError`)."""
        stamp = self._stat()
        try:
            pods, nodes, replicasets = load_inventory(self._path, self._parser)
        except InventoryError:
            self._reloads.labels(result="failed").inc()
            self._stamp = stamp  # do not retry the same broken file in a loop
            raise
        self._index.replace_nodes(nodes)
        self._index.replace_pods(pods)
        self._index.replace_replicasets(replicasets)
        self._stamp = stamp
        self._ready = True
        self._reloads.labels(result="ok").inc()
        self._log.info("static inventory %s loaded: %d nodes, %d pods", self._path, len(nodes), len(pods))

    def start(self) -> None:
        self.load()
        self._thread = threading.Thread(target=self._run, name="k8s_attributes-static", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            stamp = self._stat()
            if stamp is None or stamp == self._stamp:
                continue
            try:
                self.load()
            except InventoryError as exc:
                self._log.error("%s; keeping the previous inventory", exc)

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def is_ready(self) -> bool:
        return self._ready

    def health(self) -> str | None:
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return "static inventory poller stopped unexpectedly"
        return None
