"""The in-memory index of pods, nodes and ReplicaSets that attribution reads.

Objects are parsed minimally from the API's JSON (plain dicts): only the
fields attribution uses are kept, in small slotted objects, so that tens of
thousands of pods cost a few tens of MB.

Readers (the hot path, possibly several threads) never lock: they read
``pod_by_ip``, ``node_by_ip``, ``zone_of`` and ``rs_owner`` — plain dicts
whose single-key reads are atomic in CPython. Writers (one source thread per
resource) update those dicts in place under a lock, or build new ones and
swap the references on a re-list.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["Attrs", "ClusterIndex", "NodeInfo", "ObjectParser", "PodInfo", "canonical_ip"]

_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def canonical_ip(text: str) -> str:
    """The ``inet_ntop`` form of an address, the form conntrack records use.

    IPv4 text from the API is already canonical; IPv6 may not be (leading
    zeros, upper case), so it goes through the kernel's formatter.
    """
    if ":" not in text:
        return text
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
    except OSError:
        return text


class Attrs:
    """What an address tells about its endpoint: pod fields, or just a node.

    Shared by every flow that touches the address, so it is immutable by
    convention. ``rs_key`` is ``namespace/name`` of the owning ReplicaSet, for
    resolving it to its Deployment at attribution time.
    """

    __slots__ = ("app", "instance_id", "namespace", "node", "owner_kind", "owner_name", "pod", "rs_key")

    def __init__(  # noqa: PLR0917 - built positionally on the list path, for speed
        self,
        pod: str = "",
        namespace: str = "",
        node: str = "",
        app: str = "",
        instance_id: str = "",
        owner_kind: str = "",
        owner_name: str = "",
        rs_key: str = "",
    ) -> None:
        self.pod = pod
        self.namespace = namespace
        self.node = node
        self.app = app
        self.instance_id = instance_id
        self.owner_kind = owner_kind
        self.owner_name = owner_name
        self.rs_key = rs_key

    def __repr__(self) -> str:
        return f"Attrs(pod={self.namespace}/{self.pod}, node={self.node}, app={self.app})"


class PodInfo:
    """The parts of a Pod the index needs."""

    __slots__ = ("attrs", "created", "host_network", "ips", "key", "phase")

    def __init__(  # noqa: PLR0917 - built positionally on the list path, for speed
        self, key: str, ips: tuple[str, ...], phase: str, created: str, host_network: bool, attrs: Attrs
    ) -> None:
        self.key = key
        self.ips = ips
        self.phase = phase
        self.created = created
        self.host_network = host_network
        self.attrs = attrs

    @property
    def indexable(self) -> bool:
        # hostNetwork pods carry the node's IP (node traffic, not theirs alone);
        # finished pods keep their IP in the API but no longer own it.
        return bool(self.ips) and not self.host_network and self.phase not in _TERMINAL_PHASES

    def rank(self) -> tuple[bool, str, str]:
        """Among pods sharing an IP the greatest rank wins: running, then newest."""
        return (self.phase == "Running", self.created, self.key)


class NodeInfo:
    """The parts of a Node the index needs."""

    __slots__ = ("addresses", "attrs", "name", "zone")

    def __init__(self, name: str, zone: str, addresses: tuple[str, ...]) -> None:
        self.name = name
        self.zone = zone
        self.addresses = addresses
        self.attrs = Attrs(node=name)


def _first_label(labels: dict[str, str], names: Sequence[str]) -> str:
    for name in names:
        value = labels.get(name)
        if value:
            return value
    return ""


class ObjectParser:
    """Turns API objects (JSON dicts) into :class:`PodInfo`/:class:`NodeInfo`."""

    def __init__(
        self,
        *,
        app_labels: Sequence[str] = ("app.kubernetes.io/name", "k8s-app"),
        instance_id_labels: Sequence[str] = ("control-plane-id",),
        zone_labels: Sequence[str] = ("topology.kubernetes.io/zone",),
        address_types: Sequence[str] = ("InternalIP",),
    ) -> None:
        self._app_labels = tuple(app_labels)
        self._instance_labels = tuple(instance_id_labels)
        self._zone_labels = tuple(zone_labels)
        self._address_types = frozenset(address_types)

    def pod(self, obj: dict[str, Any]) -> PodInfo:
        md = obj["metadata"]
        name = md["name"]
        namespace = md.get("namespace") or ""
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        labels = md.get("labels") or {}
        ips = tuple(canonical_ip(p["ip"]) for p in status.get("podIPs") or () if p.get("ip"))
        if not ips and status.get("podIP"):
            ips = (canonical_ip(status["podIP"]),)
        owner_kind = owner_name = rs_key = ""
        refs = md.get("ownerReferences") or ()
        ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
        if ref is not None:
            owner_kind, owner_name = ref.get("kind") or "", ref.get("name") or ""
            if owner_kind == "ReplicaSet":
                rs_key = f"{namespace}/{owner_name}"
        attrs = Attrs(
            name, namespace, spec.get("nodeName") or "",
            _first_label(labels, self._app_labels), _first_label(labels, self._instance_labels),
            owner_kind, owner_name, rs_key,
        )
        return PodInfo(
            f"{namespace}/{name}", ips, status.get("phase") or "Pending",
            md.get("creationTimestamp") or "", bool(spec.get("hostNetwork")), attrs,
        )

    def node(self, obj: dict[str, Any]) -> NodeInfo:
        md = obj["metadata"]
        addresses = tuple(
            canonical_ip(a["address"])
            for a in (obj.get("status") or {}).get("addresses") or ()
            if a.get("type") in self._address_types and a.get("address")
        )
        return NodeInfo(md["name"], _first_label(md.get("labels") or {}, self._zone_labels), addresses)

    @staticmethod
    def replicaset(obj: dict[str, Any]) -> tuple[str, tuple[str, str] | None]:
        """``(namespace/name, (owner kind, owner name) or None)``."""
        md = obj["metadata"]
        refs = md.get("ownerReferences") or ()
        ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
        owner = (ref.get("kind") or "", ref.get("name") or "") if ref is not None else None
        return f"{md.get('namespace') or ''}/{md['name']}", owner

    @staticmethod
    def key(obj: dict[str, Any]) -> str:
        md = obj["metadata"]
        return f"{md.get('namespace') or ''}/{md['name']}"


class ClusterIndex:
    """Pods by IP, nodes by address and name, ReplicaSet owners; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, PodInfo] = {}
        self._ip_pods: dict[str, list[PodInfo]] = {}  # candidates per IP, for conflict resolution
        self.pod_by_ip: dict[str, Attrs] = {}
        self._nodes: dict[str, NodeInfo] = {}
        self._ip_nodes: dict[str, list[NodeInfo]] = {}
        self.node_by_ip: dict[str, Attrs] = {}
        self.zone_of: dict[str, str] = {}
        self.rs_owner: dict[str, tuple[str, str]] = {}

    # ------------------------------------------------------------ counts (metrics)

    @property
    def pod_count(self) -> int:
        return len(self._pods)

    @property
    def node_count(self) -> int:
        return len(self._nodes)

    @property
    def pod_ip_count(self) -> int:
        return len(self.pod_by_ip)

    def shared_ip_count(self) -> int:
        """IPs claimed by more than one eligible pod (resolved by rank, not an error)."""
        return sum(1 for c in list(self._ip_pods.values()) if len(c) > 1)

    def pod(self, key: str) -> PodInfo | None:
        return self._pods.get(key)

    def node(self, name: str) -> NodeInfo | None:
        return self._nodes.get(name)

    # ------------------------------------------------------------ pods

    def upsert_pod(self, pod: PodInfo) -> None:
        with self._lock:
            old = self._pods.get(pod.key)
            touched: set[str] = set()
            if old is not None and old.indexable:
                for ip in old.ips:
                    self._drop_candidate(self._ip_pods, ip, old)
                    touched.add(ip)
            self._pods[pod.key] = pod
            if pod.indexable:
                for ip in pod.ips:
                    self._ip_pods.setdefault(ip, []).append(pod)
                    touched.add(ip)
            for ip in touched:
                self._resolve_pod_ip(ip)

    def remove_pod(self, key: str) -> None:
        with self._lock:
            old = self._pods.pop(key, None)
            if old is None or not old.indexable:
                return
            for ip in old.ips:
                self._drop_candidate(self._ip_pods, ip, old)
                self._resolve_pod_ip(ip)

    def replace_pods(self, pods: Iterable[PodInfo]) -> None:
        """Replace every pod (after a full list); readers switch atomically."""
        by_key: dict[str, PodInfo] = {}
        ip_pods: dict[str, list[PodInfo]] = {}
        for pod in pods:
            by_key[pod.key] = pod
            if pod.indexable:
                for ip in pod.ips:
                    ip_pods.setdefault(ip, []).append(pod)
        by_ip = {ip: (c[0] if len(c) == 1 else max(c, key=PodInfo.rank)).attrs for ip, c in ip_pods.items()}
        with self._lock:
            self._pods, self._ip_pods, self.pod_by_ip = by_key, ip_pods, by_ip

    def _resolve_pod_ip(self, ip: str) -> None:
        candidates = self._ip_pods.get(ip)
        if not candidates:
            self._ip_pods.pop(ip, None)
            self.pod_by_ip.pop(ip, None)
        else:
            best = candidates[0] if len(candidates) == 1 else max(candidates, key=PodInfo.rank)
            self.pod_by_ip[ip] = best.attrs

    @staticmethod
    def _drop_candidate(table: dict[str, list[Any]], ip: str, item: object) -> None:
        candidates = table.get(ip)
        if candidates is not None:
            candidates[:] = [c for c in candidates if c is not item]

    # ------------------------------------------------------------ nodes

    def upsert_node(self, node: NodeInfo) -> None:
        with self._lock:
            old = self._nodes.get(node.name)
            touched: set[str] = set()
            if old is not None:
                for ip in old.addresses:
                    self._drop_candidate(self._ip_nodes, ip, old)
                    touched.add(ip)
            self._nodes[node.name] = node
            self.zone_of[node.name] = node.zone
            for ip in node.addresses:
                self._ip_nodes.setdefault(ip, []).append(node)
                touched.add(ip)
            for ip in touched:
                self._resolve_node_ip(ip)

    def remove_node(self, name: str) -> None:
        with self._lock:
            old = self._nodes.pop(name, None)
            self.zone_of.pop(name, None)
            if old is None:
                return
            for ip in old.addresses:
                self._drop_candidate(self._ip_nodes, ip, old)
                self._resolve_node_ip(ip)

    def replace_nodes(self, nodes: Iterable[NodeInfo]) -> None:
        by_name: dict[str, NodeInfo] = {}
        ip_nodes: dict[str, list[NodeInfo]] = {}
        for node in nodes:
            by_name[node.name] = node
            for ip in node.addresses:
                ip_nodes.setdefault(ip, []).append(node)
        by_ip = {ip: c[-1].attrs for ip, c in ip_nodes.items()}
        zones = {n.name: n.zone for n in by_name.values()}
        with self._lock:
            self._nodes, self._ip_nodes, self.node_by_ip, self.zone_of = by_name, ip_nodes, by_ip, zones

    def _resolve_node_ip(self, ip: str) -> None:
        candidates = self._ip_nodes.get(ip)
        if not candidates:
            self._ip_nodes.pop(ip, None)
            self.node_by_ip.pop(ip, None)
        else:  # nodes sharing an address: the latest written wins
            self.node_by_ip[ip] = candidates[-1].attrs

    # ------------------------------------------------------------ ReplicaSets

    def upsert_replicaset(self, key: str, owner: tuple[str, str] | None) -> None:
        with self._lock:
            if owner is None:
                self.rs_owner.pop(key, None)
            else:
                self.rs_owner[key] = owner

    def remove_replicaset(self, key: str) -> None:
        with self._lock:
            self.rs_owner.pop(key, None)

    def replace_replicasets(self, items: Iterable[tuple[str, tuple[str, str] | None]]) -> None:
        owners = {key: owner for key, owner in items if owner is not None}
        with self._lock:
            self.rs_owner = owners
