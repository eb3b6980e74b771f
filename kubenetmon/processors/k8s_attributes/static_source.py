"""The ``static`` source: nodes and pods from a YAML inventory file, reloaded on change.

For a single machine without Kubernetes, for tests, and for hosts outside a
cluster. The format is documented in the README; each entry is either the
short form (``name``, ``node``, ``ips``, ``labels``…) or a Kubernetes object
(``kind``/``metadata``…, e.g. the output of ``kubectl get pods -o yaml``).
"""

from __future__ import annotations

import logging
import os
import reprlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kubenetmon.errors import KubenetmonError
from kubenetmon.processors.k8s_attributes.index import ClusterIndex, InvalidObject, NodeInfo, ObjectParser, PodInfo
from kubenetmon.processors.k8s_attributes.inventory_file import load_text
from kubenetmon.telemetry.metrics import ComponentMetrics

T = TypeVar("T")

__all__ = ["InventoryError", "StaticSource", "load_inventory"]

_POD_KEYS = {"name", "namespace", "node", "ip", "ips", "labels", "phase", "host_network", "created", "owner"}
_NODE_KEYS = {"name", "addresses", "zone", "labels"}
_RS_KEYS = {"name", "namespace", "owner"}
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 80, 80, 4, 4


class InventoryError(KubenetmonError):
    """The inventory file cannot be read or is malformed; the message says where."""


def _short(value: Any) -> str:
    """A bounded repr for messages: a hostile inventory must not make a huge log line."""
    return _REPR.repr(value)


def _owner_refs(entry: dict[str, Any], where: str) -> list[dict[str, Any]]:
    owner = entry.get("owner")
    if owner is None:
        return []
    if not isinstance(owner, dict) or not owner.get("kind") or not owner.get("name"):
        raise InventoryError(f"{where}: owner must be a mapping with 'kind' and 'name', got {_short(owner)}")
    return [{"kind": owner["kind"], "name": owner["name"], "controller": True}]


def _check_short(entry: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(map(str, entry)) - allowed)
    if unknown:
        raise InventoryError(
            f"{where}: unknown key(s) {', '.join(unknown)[:200]}; allowed: {', '.join(sorted(allowed))}"
        )
    if entry.get("name") in (None, ""):
        raise InventoryError(f"{where}: 'name' is required")


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InventoryError(f"{where}: expected a list of addresses, got {_short(value)}")
    return value


def _labels(entry: dict[str, Any], where: str) -> dict[str, Any]:
    labels = entry.get("labels")
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise InventoryError(f"{where}.labels: expected a mapping of label: value, got {_short(labels)}")
    return dict(labels)


def _pod_object(entry: dict[str, Any], where: str) -> dict[str, Any]:
    if "metadata" in entry:
        return entry
    _check_short(entry, _POD_KEYS, where)
    ips = _str_list(entry.get("ip"), where + ".ip") + _str_list(entry.get("ips"), where + ".ips")
    status: dict[str, Any] = {"phase": entry.get("phase") or "Running", "podIPs": [{"ip": i} for i in ips]}
    # Values go to the parser as written: it coerces numbers to text and rejects the rest.
    return {
        "metadata": {
            "name": entry["name"], "namespace": entry.get("namespace") or "default",
            "labels": _labels(entry, where), "creationTimestamp": entry.get("created") or "",
            "ownerReferences": _owner_refs(entry, where),
        },
        "spec": {"nodeName": entry.get("node") or "", "hostNetwork": entry.get("host_network")},
        "status": status,
    }


def _node_object(entry: dict[str, Any], where: str) -> dict[str, Any]:
    if "metadata" in entry:
        return entry
    _check_short(entry, _NODE_KEYS, where)
    labels = _labels(entry, where)
    if entry.get("zone") not in (None, ""):
        labels["topology.kubernetes.io/zone"] = entry["zone"]
    addresses = [{"type": "InternalIP", "address": a} for a in _str_list(entry.get("addresses"), where)]
    return {"metadata": {"name": entry["name"], "labels": labels}, "status": {"addresses": addresses}}


Inventory = tuple[list[PodInfo], list[NodeInfo], list[tuple[str, tuple[str, str] | None]]]


def load_inventory(path: str | Path, parser: ObjectParser) -> Inventory:
    """Parse an inventory file; raise :class:`InventoryError` naming the file and the entry at fault.

    Whatever the bytes (not UTF-8, too deeply nested, wrong types anywhere), the
    only exception is :class:`InventoryError`. A file with no YAML document at
    all (empty, or only comments) is refused: it is what a writer truncating the
    file leaves behind. An inventory that is empty on purpose says so, e.g.
    ``pods: []``.
    """
    try:
        return _load(path, parser)
    except InventoryError:
        raise
    except RecursionError as exc:
        raise InventoryError(f"static inventory {path}: nested too deeply to be an inventory") from exc
    except Exception as exc:  # any other shape problem: named, never a traceback
        raise InventoryError(f"static inventory {path}: malformed ({_short(exc)})") from exc


def _load(path: str | Path, parser: ObjectParser) -> Inventory:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InventoryError(f"cannot read static inventory {path}: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InventoryError(f"static inventory {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    del raw

    def replicaset(entry: dict[str, Any], where: str) -> tuple[str, tuple[str, str] | None]:
        rs = entry
        if "metadata" not in entry:
            _check_short(entry, _RS_KEYS, where)
            rs = {"metadata": {"name": entry["name"], "namespace": entry.get("namespace") or "default",
                               "ownerReferences": _owner_refs(entry, where)}}
        return parser.replicaset(rs)

    pods: list[PodInfo] = []
    nodes: list[NodeInfo] = []
    replicasets: list[tuple[str, tuple[str, str] | None]] = []
    sections: dict[str, tuple[str, list[Any], Callable[[dict[str, Any], str], Any]]] = {
        "pods": ("pod", pods, lambda e, w: parser.pod(_pod_object(e, w))),
        "nodes": ("node", nodes, lambda e, w: parser.node(_node_object(e, w))),
        "replicasets": ("replicaset", replicasets, replicaset),
    }
    kinds = {"Pod": "pods", "Node": "nodes", "ReplicaSet": "replicasets"}

    def convert(key: Any, i: int, entry: Any) -> Any:
        # Each entry is parsed as soon as the file's parser has it, and not kept in the document
        # (see inventory_file: the whole document would pin its memory under the parsed objects).
        place = f"{key}[{i}]"
        if key == "items":  # a kubectl List
            kind = entry.get("kind") if isinstance(entry, dict) else None
            if not isinstance(kind, str) or kind not in kinds:
                raise InventoryError(f"static inventory {path}: {place} has kind {_short(kind)}; "
                                     "only Pod, Node and ReplicaSet are understood")
            key = kinds[kind]
        elif key not in sections:
            return entry  # an unknown key: refused below, whole
        what, parsed, parse = sections[key]
        parsed.append(_parse_entry(f"static inventory {path}: {place}", entry, what, parse))
        return None

    try:
        doc = load_text(text, convert)  # JSON, or YAML without safe_load's node tree (see inventory_file)
    except yaml.YAMLError as exc:
        raise InventoryError(f"static inventory {path} is not valid YAML: {exc}") from exc
    if doc is None:
        raise InventoryError(
            f"static inventory {path} is empty (no YAML document); write 'pods: []' for an inventory "
            "that is empty on purpose"
        )
    if not isinstance(doc, dict):
        raise InventoryError(f"static inventory {path}: the top level must be a mapping with nodes: and pods:")
    unknown = sorted(set(map(str, doc)) - {"nodes", "pods", "replicasets", "items", "apiVersion", "kind",
                                           "metadata"})
    if unknown:
        raise InventoryError(f"static inventory {path}: unknown top-level key(s) {', '.join(unknown)[:200]}; "
                             "expected nodes, pods, replicasets or items")
    for name in (*sections, "items"):
        if not isinstance(doc.get(name) or [], list):
            raise InventoryError(f"static inventory {path}: {name} must be a list, got {_short(doc[name])}")
    return pods, nodes, replicasets


def _parse_entry(where: str, entry: Any, what: str, parse: Callable[[dict[str, Any], str], T]) -> T:
    """Parse one inventory entry; errors name the file, the entry and what is wrong."""
    if not isinstance(entry, dict):
        raise InventoryError(f"{where}: expected a mapping, got {_short(entry)}")
    try:
        return parse(entry, where)
    except InvalidObject as exc:
        raise InventoryError(f"{where}: {exc}") from exc
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise InventoryError(f"{where}: malformed {what} ({_short(exc)})") from exc


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
        self._stamp: tuple[int, int, int] | None = None
        self._ready = False
        self._died: str | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        # The inode too: a file replaced by rename (the safe way to rewrite it) is always seen as changed.
        return (st.st_ino, st.st_mtime_ns, st.st_size)

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
        try:
            while not self._stop.wait(self._poll):
                stamp = self._stat()
                if stamp is None or stamp == self._stamp:
                    continue
                try:
                    self.load()
                except InventoryError as exc:
                    self._log.error("%s; keeping the previous inventory", exc)
                except Exception:  # a bug, not a bad file: still keep the last good inventory and polling
                    self._reloads.labels(result="failed").inc()
                    self._stamp = stamp
                    self._log.exception("static inventory %s: reload failed; keeping the previous inventory",
                                        self._path)
        except BaseException as exc:  # reported through health() (/live) rather than dying silently
            self._died = f"static inventory poller died: {type(exc).__name__}: {exc}"
            raise

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def is_ready(self) -> bool:
        return self._ready

    def health(self) -> str | None:
        if self._died is not None:
            return self._died
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return "static inventory poller stopped unexpectedly"
        return None
