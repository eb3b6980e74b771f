"""The in-memory index of pods, nodes and ReplicaSets that attribution reads.

Objects are parsed minimally from the API's JSON (plain dicts): only the
fields attribution uses are kept, in small slotted objects, so that tens of
thousands of pods cost a few tens of MB.

Readers (the hot path, possibly several threads) never lock: they read
``pod_by_ip``, ``node_by_ip``, ``zone_of`` and ``rs_owner`` — plain dicts
whose single-key reads are atomic in CPython. Writers (one source thread per
resource) update those dicts in place under a lock, or build new ones and
swap the references on a re-list.

**Time-aware attribution.** Records can reach the gateway long after their
interval (an agent queues during a gateway outage), and by then a pod may be
gone and its IPs given to another pod. So a pod that stops holding an IP
(deleted, finished, IP changed, or absent from a re-list / static reload)
leaves a *tenancy* ``(since_ns, until_ns, Attrs)`` in ``retired_by_ip`` for
``retention_ns``: ``since`` is the pod's creationTimestamp (or when it was
first seen), ``until`` when the index learnt it ended. Zones of deleted nodes
and owners of deleted ReplicaSets are kept as long. The store is bounded by
``max_retired`` tenancies (oldest evicted first, counted in ``evicted``).
Readers pick among the current holder and the retired tenancies of an IP with
:func:`pick_tenant`; lists in ``retired_by_ip`` are replaced, never mutated,
so a reader never sees one half-written.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from sys import intern
from typing import Any

__all__ = [
    "Attrs", "ClusterIndex", "InvalidObject", "NodeInfo", "ObjectParser", "PodInfo", "Tenancy", "canonical_ip",
    "pick_tenant",
]

_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
_FOREVER = 1 << 62

# (since_ns, until_ns, attrs): one pod's hold on one IP, ended at until_ns.
Tenancy = tuple[int, int, "Attrs"]


class InvalidObject(ValueError):
    """An API or inventory object has a value of the wrong type; the message names the field."""


def _text(value: Any, where: str) -> str:
    """A string field as a string: numbers and booleans (an unquoted YAML ``12345`` or ``true``) are
    coerced to their text, so that no int ever reaches a String column; mappings and lists are errors."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise InvalidObject(f"{where} must be a string, got {type(value).__name__}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidObject(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _sequence(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidObject(f"{where} must be a list, got {type(value).__name__}")
    return value


def _flag(value: Any, where: str) -> bool:
    """A boolean field; the text "false" is no true value (bool("false") would be)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidObject(f"{where} must be true or false, got {str(value)[:40]!r}")


def _labels(value: Any, where: str) -> dict[str, str]:
    return {_text(k, where): _text(v, f"{where}.{str(k)[:64]}") for k, v in _mapping(value, where).items()}


def _address(value: Any, where: str) -> str:
    try:
        return canonical_ip(_text(value, where))
    except InvalidObject as exc:
        raise InvalidObject(f"{where}: {exc}") from None


def _timestamp_ns(text: str) -> int:
    """``metadata.creationTimestamp`` (RFC 3339) in ns since the epoch; 0 when absent or unparsable."""
    if not text:
        return 0
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1_000_000_000)
    except ValueError:
        return 0


def pick_tenant(current: Attrs | None, retired: list[Tenancy], start_ns: int, end_ns: int) -> Attrs | None:
    """The holder of an IP during ``[start_ns, end_ns)``: among the current holder (since its
    creation) and the retired tenancies, the one that overlaps the interval most (ties: the newest);
    when none overlaps (no times, or older than the retention), the current holder, as without history."""
    if end_ns <= start_ns:
        end_ns = start_ns + 1
    best = current
    best_overlap = 0
    best_since = -1
    if current is not None:
        overlap = end_ns - max(start_ns, current.created_ns)
        if overlap > 0:
            best_overlap, best_since = overlap, current.created_ns
    for since, until, attrs in retired:
        overlap = min(end_ns, until) - max(start_ns, since)
        if overlap > best_overlap or (overlap > 0 and overlap == best_overlap and since > best_since):
            best, best_overlap, best_since = attrs, overlap, since
    return best


def canonical_ip(text: str) -> str:
    """The ``inet_ntop`` form of an address, the form conntrack records use.

    IPv4 text from the API is already canonical; IPv6 may not be (leading
    zeros, upper case), so it goes through the kernel's formatter. Text that
    is no address raises :class:`InvalidObject` (it could never match a record).
    """
    try:
        if ":" not in text:
            socket.inet_pton(socket.AF_INET, text)
            return text
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
    except (OSError, ValueError) as exc:
        raise InvalidObject(f"{text[:64]!r} is not an IP address") from exc


class Attrs:
    """What an address tells about its endpoint: pod fields, or just a node.

    Shared by every flow that touches the address, so it is immutable by
    convention. ``rs_key`` is ``namespace/name`` of the owning ReplicaSet, for
    resolving it to its Deployment at attribution time.
    """

    __slots__ = (
        "app", "cluster", "created_ns", "instance_id", "namespace", "node", "owner_kind", "owner_name", "pod",
        "rs_key",
    )

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
        cluster: str = "",
        created_ns: int = 0,
    ) -> None:
        self.pod = pod
        self.namespace = namespace
        self.node = node
        self.app = app
        self.instance_id = instance_id
        self.owner_kind = owner_kind
        self.owner_name = owner_name
        self.rs_key = rs_key
        # The inventory the endpoint belongs to; "" is the processor's own cluster.
        self.cluster = cluster
        # When the pod came to be (creationTimestamp, else first seen): the start of its tenancies.
        self.created_ns = created_ns

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

    def __init__(self, name: str, zone: str, addresses: tuple[str, ...], cluster: str = "") -> None:
        self.name = name
        self.zone = zone
        self.addresses = addresses
        self.attrs = Attrs(node=name, cluster=cluster)


def _first_label(labels: dict[str, str], names: Sequence[str]) -> str:
    for name in names:
        value = labels.get(name)
        if value:
            return value
    return ""


class ObjectParser:
    """Turns API objects (JSON dicts) into :class:`PodInfo`/:class:`NodeInfo`.

    Every string field is validated and coerced here (:func:`_text`), for both
    sources: an unquoted number in a static inventory (``control-plane-id:
    12345``) becomes ``"12345"``; a mapping or list where a string belongs
    raises :class:`InvalidObject` naming the field.
    """

    def __init__(
        self,
        *,
        app_labels: Sequence[str] = ("app.kubernetes.io/name", "k8s-app"),
        instance_id_labels: Sequence[str] = ("control-plane-id",),
        zone_labels: Sequence[str] = ("topology.kubernetes.io/zone",),
        address_types: Sequence[str] = ("InternalIP",),
        cluster: str = "",
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._app_labels = tuple(app_labels)
        self._instance_labels = tuple(instance_id_labels)
        self._zone_labels = tuple(zone_labels)
        self._address_types = frozenset(address_types)
        self._cluster = cluster
        self._clock = clock

    def pod(self, obj: dict[str, Any]) -> PodInfo:
        md = _mapping(obj["metadata"], "metadata")
        name = _text(md["name"], "metadata.name")
        if not name:
            raise InvalidObject("metadata.name is empty")
        namespace = _text(md.get("namespace"), "metadata.namespace")
        spec = _mapping(obj.get("spec"), "spec")
        status = _mapping(obj.get("status"), "status")
        labels = _labels(md.get("labels"), "metadata.labels")
        ips = tuple(
            _address(ip, f"status.podIPs[{i}].ip")
            for i, p in enumerate(_sequence(status.get("podIPs"), "status.podIPs"))
            if (ip := _mapping(p, f"status.podIPs[{i}]").get("ip"))
        )
        if not ips and status.get("podIP"):
            ips = (_address(status["podIP"], "status.podIP"),)
        owner_kind = owner_name = rs_key = ""
        ref = self._controller(md)
        if ref is not None:
            owner_kind, owner_name = ref
            if owner_kind == "ReplicaSet":
                rs_key = f"{namespace}/{owner_name}"
        created = _text(md.get("creationTimestamp"), "metadata.creationTimestamp")
        # Namespace, node, phase, owner, app… repeat across pods: one string each (sys.intern; freed
        # with their last pod) instead of the parser's copy per pod, ~10 MB at 50k pods.
        attrs = Attrs(
            name, intern(namespace), intern(_text(spec.get("nodeName"), "spec.nodeName")),
            intern(_first_label(labels, self._app_labels)), intern(_first_label(labels, self._instance_labels)),
            intern(owner_kind), intern(owner_name), intern(rs_key), self._cluster,
            _timestamp_ns(created) or self._clock(),
        )
        return PodInfo(
            f"{namespace}/{name}", ips, intern(_text(status.get("phase"), "status.phase") or "Pending"),
            intern(created), _flag(spec.get("hostNetwork"), "spec.hostNetwork"), attrs,
        )

    def node(self, obj: dict[str, Any]) -> NodeInfo:
        md = _mapping(obj["metadata"], "metadata")
        name = _text(md["name"], "metadata.name")
        if not name:
            raise InvalidObject("metadata.name is empty")
        addresses = []
        status = _mapping(obj.get("status"), "status")
        for i, item in enumerate(_sequence(status.get("addresses"), "status.addresses")):
            a = _mapping(item, f"status.addresses[{i}]")
            address = a.get("address")
            if _text(a.get("type"), f"status.addresses[{i}].type") in self._address_types and address:
                addresses.append(_address(address, f"status.addresses[{i}].address"))
        zone = _first_label(_labels(md.get("labels"), "metadata.labels"), self._zone_labels)
        return NodeInfo(name, zone, tuple(addresses), self._cluster)

    @staticmethod
    def _controller(md: dict[str, Any]) -> tuple[str, str] | None:
        """``(kind, name)`` of the controller ownerReference (else the first one), or None."""
        refs = _sequence(md.get("ownerReferences"), "metadata.ownerReferences")
        if not refs:
            return None
        ref = next((r for r in refs if isinstance(r, dict) and r.get("controller")), refs[0])
        ref = _mapping(ref, "metadata.ownerReferences[]")
        return (_text(ref.get("kind"), "metadata.ownerReferences[].kind"),
                _text(ref.get("name"), "metadata.ownerReferences[].name"))

    @classmethod
    def replicaset(cls, obj: dict[str, Any]) -> tuple[str, tuple[str, str] | None]:
        """``(namespace/name, (owner kind, owner name) or None)``."""
        md = _mapping(obj["metadata"], "metadata")
        return cls.key(obj), cls._controller(md)

    @staticmethod
    def key(obj: dict[str, Any]) -> str:
        md = _mapping(obj["metadata"], "metadata")
        return f"{_text(md.get('namespace'), 'metadata.namespace')}/{_text(md['name'], 'metadata.name')}"


def _same_pod(old: PodInfo, new: PodInfo) -> bool:
    """Same pod, not one re-created under the same name (a StatefulSet's pod, say) while we did not look."""
    return old.created == new.created


class ClusterIndex:
    """Pods by IP, nodes by address and name, ReplicaSet owners; see the module docstring."""

    def __init__(
        self,
        *,
        retention_ns: int = 3600 * 1_000_000_000,
        max_retired: int = 100_000,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, PodInfo] = {}
        # Candidates per IP, for conflict resolution: tuples, replaced on change (a one-item tuple is
        # one block; a list is two and over-allocated: ~5 MB at 50k pods).
        self._ip_pods: dict[str, tuple[PodInfo, ...]] = {}
        self.pod_by_ip: dict[str, Attrs] = {}
        self._nodes: dict[str, NodeInfo] = {}
        self._ip_nodes: dict[str, tuple[NodeInfo, ...]] = {}
        self.node_by_ip: dict[str, Attrs] = {}
        self.zone_of: dict[str, str] = {}
        self.rs_owner: dict[str, tuple[str, str]] = {}
        # History for time-aware attribution (module docstring).
        self.retired_by_ip: dict[str, list[Tenancy]] = {}
        self._retention_ns = retention_ns
        self._max_retired = max_retired
        self._clock = clock
        # (until_ns, kind, key, value) in the order things ended; kind is "ip", "zone" or "rs".
        self._expiry: deque[tuple[int, str, str, Any]] = deque()
        self.retired_count = 0
        self.evicted = 0  # tenancies dropped before their retention because of max_retired
        self._rs_live: dict[str, tuple[str, str] | None] = {}  # ReplicaSets that exist now
        # Bumped by every change, so that a compiled snapshot (vector.py) knows it is stale.
        self.version = 0
        self._shared_count = (-1, 0)  # (version, shared_ip_count at that version)

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
        """IPs claimed by more than one eligible pod (resolved by rank, not an error).

        Counted once per index version: it walks every IP, and /metrics asks on
        every scrape (~10 ms at 50k pods; the gateway bench polls twice a second).
        """
        version, count = self._shared_count
        if version != self.version:
            count = sum(1 for c in list(self._ip_pods.values()) if len(c) > 1)
            self._shared_count = (self.version, count)
        return count

    def pod(self, key: str) -> PodInfo | None:
        return self._pods.get(key)

    def node(self, name: str) -> NodeInfo | None:
        return self._nodes.get(name)

    def has_node(self, name: str) -> bool:
        return name in self._nodes

    def node_names(self) -> frozenset[str]:
        return frozenset(self._nodes)

    def tenant(self, ip: str, start_ns: int, end_ns: int) -> Attrs | None:
        """The pod that held ``ip`` during ``[start_ns, end_ns)`` (see :func:`pick_tenant`)."""
        current = self.pod_by_ip.get(ip)
        retired = self.retired_by_ip.get(ip)
        return current if retired is None else pick_tenant(current, retired, start_ns, end_ns)

    # ------------------------------------------------------------ history

    def _retire(self, pod: PodInfo, ips: Iterable[str], now: int) -> None:
        """``pod`` stopped holding ``ips`` at ``now`` (lock held)."""
        attrs = pod.attrs
        for ip in ips:
            tenancy: Tenancy = (attrs.created_ns, now, attrs)
            # Replace, never mutate: readers iterate these lists without a lock.
            self.retired_by_ip[ip] = [*self.retired_by_ip.get(ip, ()), tenancy]
            self._expiry.append((now, "ip", ip, tenancy))
            self.retired_count += 1

    def _retire_zone(self, name: str, now: int) -> None:
        self._expiry.append((now, "zone", name, None))

    def _expire(self, now: int) -> None:
        """Forget what ended more than ``retention_ns`` ago, or the oldest beyond ``max_retired`` (lock held)."""
        horizon = now - self._retention_ns
        expiry = self._expiry
        while expiry and (expiry[0][0] <= horizon or self.retired_count > self._max_retired):
            until, kind, key, value = expiry.popleft()
            if kind == "ip":
                self.retired_count -= 1
                if until > horizon:
                    self.evicted += 1
                kept = [t for t in self.retired_by_ip.get(key, ()) if t is not value]
                if kept:
                    self.retired_by_ip[key] = kept
                else:
                    self.retired_by_ip.pop(key, None)
            elif kind == "zone":
                if key not in self._nodes:
                    self.zone_of.pop(key, None)
            elif key not in self._rs_live and value is self.rs_owner.get(key):
                self.rs_owner.pop(key, None)

    def expire(self) -> None:
        """Drop history past its retention (also done on every write)."""
        if self._expiry and self._expiry[0][0] <= self._clock() - self._retention_ns:
            with self._lock:
                self.version += 1
                self._expire(self._clock())

    # ------------------------------------------------------------ pods

    def upsert_pod(self, pod: PodInfo) -> None:
        with self._lock:
            self.version += 1
            now = self._clock()
            old = self._pods.get(pod.key)
            touched: set[str] = set()
            same = old is not None and _same_pod(old, pod)
            if old is not None and old.indexable:
                for ip in old.ips:
                    self._drop_candidate(self._ip_pods, ip, old)
                    touched.add(ip)
                # The IPs this pod no longer holds (changed, finished, hostNetwork) end its tenancy.
                kept = set(pod.ips) if same and pod.indexable else set()
                self._retire(old, [ip for ip in old.ips if ip not in kept], now)
            if old is not None and same:
                pod.attrs.created_ns = min(pod.attrs.created_ns, old.attrs.created_ns)
            self._pods[pod.key] = pod
            if pod.indexable:
                for ip in pod.ips:
                    self._ip_pods[ip] = (*self._ip_pods.get(ip, ()), pod)
                    touched.add(ip)
            for ip in touched:
                self._resolve_pod_ip(ip)
            self._expire(now)

    def remove_pod(self, key: str) -> None:
        with self._lock:
            self.version += 1
            now = self._clock()
            old = self._pods.pop(key, None)
            if old is None or not old.indexable:
                return
            self._retire(old, old.ips, now)
            for ip in old.ips:
                self._drop_candidate(self._ip_pods, ip, old)
                self._resolve_pod_ip(ip)
            self._expire(now)

    def replace_pods(self, pods: Iterable[PodInfo]) -> None:
        """Replace every pod (after a full list or a reload); readers switch atomically.

        A pod absent from the new list, or holding fewer IPs, ended at this call."""
        by_key: dict[str, PodInfo] = {}
        ip_pods: dict[str, tuple[PodInfo, ...]] = {}
        for pod in pods:
            by_key[pod.key] = pod
            if pod.indexable:
                for ip in pod.ips:
                    ip_pods[ip] = (*ip_pods.get(ip, ()), pod)
        by_ip = {ip: (c[0] if len(c) == 1 else max(c, key=PodInfo.rank)).attrs for ip, c in ip_pods.items()}
        with self._lock:
            self.version += 1
            now = self._clock()
            for key, old in self._pods.items():
                new = by_key.get(key)
                if new is not None and not _same_pod(old, new):
                    new = None  # a pod of the same name created anew: the old one ended
                if new is not None:
                    new.attrs.created_ns = min(new.attrs.created_ns, old.attrs.created_ns)
                if not old.indexable:
                    continue
                kept = set(new.ips) if new is not None and new.indexable else set()
                self._retire(old, [ip for ip in old.ips if ip not in kept], now)
            self._pods, self._ip_pods, self.pod_by_ip = by_key, ip_pods, by_ip
            self._expire(now)

    def _resolve_pod_ip(self, ip: str) -> None:
        candidates = self._ip_pods.get(ip)
        if not candidates:
            self._ip_pods.pop(ip, None)
            self.pod_by_ip.pop(ip, None)
        else:
            best = candidates[0] if len(candidates) == 1 else max(candidates, key=PodInfo.rank)
            self.pod_by_ip[ip] = best.attrs

    @staticmethod
    def _drop_candidate(table: dict[str, tuple[Any, ...]], ip: str, item: object) -> None:
        candidates = table.get(ip)
        if candidates is not None:
            table[ip] = tuple(c for c in candidates if c is not item)

    # ------------------------------------------------------------ nodes

    def upsert_node(self, node: NodeInfo) -> None:
        with self._lock:
            self.version += 1
            old = self._nodes.get(node.name)
            touched: set[str] = set()
            if old is not None:
                for ip in old.addresses:
                    self._drop_candidate(self._ip_nodes, ip, old)
                    touched.add(ip)
            self._nodes[node.name] = node
            self.zone_of[node.name] = node.zone
            for ip in node.addresses:
                self._ip_nodes[ip] = (*self._ip_nodes.get(ip, ()), node)
                touched.add(ip)
            for ip in touched:
                self._resolve_node_ip(ip)
            self._expire(self._clock())

    def remove_node(self, name: str) -> None:
        with self._lock:
            self.version += 1
            now = self._clock()
            old = self._nodes.pop(name, None)
            if old is None:
                return
            # The zone stays for the retention: pods of this node may still have records to come.
            self._retire_zone(name, now)
            for ip in old.addresses:
                self._drop_candidate(self._ip_nodes, ip, old)
                self._resolve_node_ip(ip)
            self._expire(now)

    def replace_nodes(self, nodes: Iterable[NodeInfo]) -> None:
        by_name: dict[str, NodeInfo] = {}
        ip_nodes: dict[str, tuple[NodeInfo, ...]] = {}
        for node in nodes:
            by_name[node.name] = node
            for ip in node.addresses:
                ip_nodes[ip] = (*ip_nodes.get(ip, ()), node)
        by_ip = {ip: c[-1].attrs for ip, c in ip_nodes.items()}
        zones = {n.name: n.zone for n in by_name.values()}
        with self._lock:
            self.version += 1
            now = self._clock()
            for name in self._nodes.keys() - by_name.keys():
                zones[name] = self.zone_of.get(name, "")
                self._retire_zone(name, now)
            self._nodes, self._ip_nodes, self.node_by_ip, self.zone_of = by_name, ip_nodes, by_ip, zones
            self._expire(now)

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
            self.version += 1
            self._rs_live[key] = owner
            if owner is None:
                self.rs_owner.pop(key, None)
            else:
                self.rs_owner[key] = owner

    def remove_replicaset(self, key: str) -> None:
        with self._lock:
            self.version += 1
            now = self._clock()
            self._rs_live.pop(key, None)
            # The owner stays for the retention: pods of this ReplicaSet may still have records to come.
            owner = self.rs_owner.get(key)
            if owner is not None:
                self._expiry.append((now, "rs", key, owner))
            self._expire(now)

    def replace_replicasets(self, items: Iterable[tuple[str, tuple[str, str] | None]]) -> None:
        live = dict(items)
        owners = {key: owner for key, owner in live.items() if owner is not None}
        with self._lock:
            self.version += 1
            now = self._clock()
            for key in self.rs_owner.keys() - owners.keys():
                if key not in live:
                    owners[key] = self.rs_owner[key]
                    self._expiry.append((now, "rs", key, owners[key]))
            self._rs_live = live
            self.rs_owner = owners
            self._expire(now)

    def locked(self) -> threading.Lock:
        """The writers' lock, for a reader that copies several tables as one consistent snapshot."""
        return self._lock
