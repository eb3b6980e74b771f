"""What the table must hold, derived from the kernel's counters and the cluster's inventory.

An oracle written independently of the pipeline's processors, from the
original's decision procedure (reference §5.4): for each entry a node's
conntrack table counted, the local endpoint is the one whose pod runs on
that node (the original source when both do), the remote one is the
original source or the **reply** source (the real backend behind a
ClusterIP); ``out`` is what the local endpoint sent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kubenetmon.demo.conntrack_table import ConntrackEntry
from kubenetmon.demo.minicluster import MiniCluster, Pod

__all__ = ["ExpectedFlow", "Side", "attribute", "pair_totals"]


@dataclass(frozen=True)
class Side:
    """One endpoint as the table's local*/remote* columns describe it."""

    address: str
    pod: str = ""
    namespace: str = ""
    app: str = ""
    node: str = ""
    zone: str = ""


@dataclass(frozen=True)
class ExpectedFlow:
    """One direction of one conntrack entry as seen by one node."""

    observer: str
    direction: str  # "out" | "in"
    transport: str
    network_type: str
    local: Side
    remote: Side
    bytes: int
    packets: int


def _side(address: str, pod: Pod | None, zones: Mapping[str, str]) -> Side:
    if pod is None:
        return Side(address)
    return Side(address, pod.name, pod.namespace, pod.app, pod.node, zones.get(pod.node, ""))


def attribute(
    entries_by_node: Mapping[str, Iterable[ConntrackEntry]],
    cluster: MiniCluster,
    pod_at: Callable[[str], Pod | None] | None = None,
) -> list[ExpectedFlow]:
    """Turn every node's entries into the ``out``/``in`` flows the table should hold.

    ``pod_at`` maps an address to the pod that held it (default: the
    cluster's pods now); entries where neither side is a pod of the
    observing node are skipped (they would be node or foreign traffic).
    """
    lookup = pod_at or cluster.pod_by_ip
    zones = {name: node.zone for name, node in cluster.nodes.items()}
    flows: list[ExpectedFlow] = []
    for node, entries in entries_by_node.items():
        for e in entries:
            src_pod, peer_pod = lookup(e.src), lookup(e.reply_src)
            src_local = src_pod is not None and src_pod.node == node
            peer_local = peer_pod is not None and peer_pod.node == node
            if not (src_local or peer_local):
                continue
            if src_local:
                local, remote = _side(e.src, src_pod, zones), _side(e.reply_src, peer_pod, zones)
                out_b, out_p, in_b, in_p = e.original_bytes, e.original_packets, e.reply_bytes, e.reply_packets
            else:
                local, remote = _side(e.reply_src, peer_pod, zones), _side(e.src, src_pod, zones)
                out_b, out_p, in_b, in_p = e.reply_bytes, e.reply_packets, e.original_bytes, e.original_packets
            flows.append(ExpectedFlow(node, "out", e.transport, e.network_type, local, remote, out_b, out_p))
            flows.append(ExpectedFlow(node, "in", e.transport, e.network_type, local, remote, in_b, in_p))
    return flows


def pair_totals(flows: Iterable[ExpectedFlow]) -> dict[tuple[str, str, str, str], int]:
    """Bytes by (local pod or address, remote pod or address, direction, transport)."""
    totals: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for f in flows:
        key = (f.local.pod or f.local.address, f.remote.pod or f.remote.address, f.direction, f.transport)
        totals[key] += f.bytes
    return dict(totals)
