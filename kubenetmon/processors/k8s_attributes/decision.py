"""The decision procedure: one conntrack record → an ``out`` and an ``in`` flow.

It follows the original labeler (reference §5.4) step by step, minus its
failure modes (§12):

1. **Node flow**: the original source or the reply source is a node address
   (this covers hostNetwork pods, whose IP is the node's). Dropped by default
   (``node_flows: drop``), or kept and attributed to the node.
2. **Endpoints**: ``src`` is the original source; ``dst`` is the **reply
   source** — the real backend behind a ClusterIP after DNAT. The original
   and reply destinations are never used for identification (under SNAT the
   reply destination is the node). Each is looked up by address; pods sharing
   an IP were already resolved by the index (running, newest wins).
3. **Flow type** relative to the observing node (``record.node``), first
   match wins:

   ====  ====================================================  ===========
   rule  condition                                             local side
   ====  ====================================================  ===========
   1     src pod on node and dst pod on node                   src
   2     src pod on node                                       src
   3     dst pod on node                                       dst
   4     src unknown and dst pod on another node               src
   5     src pod on another node and dst unknown               dst
   6     anything else (unknown direction)                     src, or drop
   ====  ====================================================  ===========

4. **Counters**: when the local side is src, ``out`` carries the original
   counters and ``in`` the reply counters; when it is dst, the reverse.
5. **Endpoint fields** from the pod (namespace, name, node, app, instance id,
   owner, cluster) and the zone of its node. A local endpoint without a pod
   still gets the observing node and its zone; a remote endpoint that is no
   known pod or node gets cluster ``UNKNOWN``.

Each address is resolved as of the record's interval (``start_ns``/``end_ns``)
so that a late record goes to the pod that held the address then, not to a
pod that got the address since (see ``index.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kubenetmon.flows import ConntrackRecord, Endpoint, Flow
from kubenetmon.processors.k8s_attributes.index import Attrs, ClusterIndex, pick_tenant

__all__ = ["UNKNOWN_CLUSTER", "Attributor", "BatchOutcome"]

# The cluster of a remote endpoint that is no pod or node of a known cluster
# (the original writes it in remoteCluster; queries filter on it).
UNKNOWN_CLUSTER = "UNKNOWN"

_OUT = "out"
_IN = "in"


@dataclass(slots=True)
class BatchOutcome:
    """What happened to one batch of records (turned into metrics once per batch)."""

    attributed: int = 0
    dropped_node_flow: int = 0
    dropped_unknown_direction: int = 0
    kept_unknown_direction: int = 0
    kept_node_flow: int = 0
    lookup_hits: int = 0
    lookup_misses: int = 0
    example_node_flow: ConntrackRecord | None = None
    example_unknown: ConntrackRecord | None = None


class Attributor:
    """Applies the decision procedure to records, reading one or several :class:`ClusterIndex`.

    ``index`` is the processor's own cluster (named ``cluster``); ``peers`` are
    the other clusters of the fleet, ``(name, index)``, whose pods and nodes
    are attributed with their cluster name. An address is looked up in the own
    index first, then in the peers in order; the first that knows it wins. A
    remote endpoint that no index knows gets ``cluster = UNKNOWN`` (as the
    original writes in ``remoteCluster``). Each address is resolved at the
    record's interval (:meth:`ClusterIndex.tenant`), so records that arrive
    late still go to the pod that held the address then.
    """

    def __init__(
        self,
        index: ClusterIndex,
        *,
        cluster: str = "",
        keep_node_flows: bool = False,
        keep_unknown_direction: bool = True,
        owners: bool = False,
        peers: Sequence[tuple[str, ClusterIndex]] = (),
    ) -> None:
        self._index = index
        self._cluster = cluster
        self._keep_node_flows = keep_node_flows
        self._keep_unknown = keep_unknown_direction
        self._owners = owners
        self._peers = tuple(peers)

    def _observer_cluster(self, node: str) -> str:
        """Which inventory the observing node belongs to: "" (own) unless only a peer has it."""
        if not self._peers or self._index.has_node(node):
            return ""
        return next((name for name, index in self._peers if index.has_node(node)), "")

    def attribute(self, records: Iterable[ConntrackRecord], out: list[Flow]) -> BatchOutcome:
        """Append two flows per kept record to ``out``; return what was dropped and why."""
        # Bind everything the loop touches to locals: this loop is the hot path.
        index = self._index
        pod_by_ip = index.pod_by_ip
        node_by_ip = index.node_by_ip
        retired_get = index.retired_by_ip.get if index.retired_by_ip else None
        peers = self._peers
        zones = {"": index.zone_of, **{name: peer.zone_of for name, peer in peers}}
        zone_of = index.zone_of
        rs_owners = (
            {"": index.rs_owner, **{name: peer.rs_owner for name, peer in peers}} if self._owners else None
        )
        cluster = self._cluster
        observer_cluster: dict[str, str] = {}
        keep_nodes = self._keep_node_flows
        keep_unknown = self._keep_unknown
        append = out.append
        res = BatchOutcome()
        hits = misses = 0

        def endpoint(address: str, port: int, a: Attrs) -> Endpoint:
            owner_kind, owner_name = a.owner_kind, a.owner_name
            if rs_owners is None:
                owner_kind = owner_name = ""
            elif a.rs_key:
                resolved = rs_owners[a.cluster].get(a.rs_key)
                if resolved is not None:
                    owner_kind, owner_name = resolved
            node = a.node
            zone = (zone_of if not a.cluster else zones[a.cluster]).get(node, "") if node else ""
            return Endpoint(
                address, port, a.pod, a.namespace, node, a.app, a.instance_id,
                zone, "", "", a.cluster or cluster, "", "", owner_kind, owner_name,
            )

        def peer_node(ip: str) -> Attrs | None:
            for _, peer in peers:
                a = peer.node_by_ip.get(ip)
                if a is not None:
                    return a
            return None

        def peer_pod(ip: str, start_ns: int, end_ns: int) -> Attrs | None:
            for _, peer in peers:
                a = peer.tenant(ip, start_ns, end_ns)
                if a is not None:
                    return a
            return None

        for r in records:
            obs = r.node
            src = r.src
            dst = r.reply_src
            sa = node_by_ip.get(src)
            da = node_by_ip.get(dst)
            if peers:
                if sa is None:
                    sa = peer_node(src)
                if da is None:
                    da = peer_node(dst)
            if sa is not None or da is not None:
                if not keep_nodes:
                    res.dropped_node_flow += 1
                    if res.example_node_flow is None:
                        res.example_node_flow = r
                    continue
                res.kept_node_flow += 1
            if sa is None:
                sa = pod_by_ip.get(src)
                if retired_get is not None and (history := retired_get(src)) is not None:
                    sa = pick_tenant(sa, history, r.start_ns, r.end_ns)
                if sa is None and peers:
                    sa = peer_pod(src, r.start_ns, r.end_ns)
            if da is None:
                da = pod_by_ip.get(dst)
                if retired_get is not None and (history := retired_get(dst)) is not None:
                    da = pick_tenant(da, history, r.start_ns, r.end_ns)
                if da is None and peers:
                    da = peer_pod(dst, r.start_ns, r.end_ns)
            if sa is None:
                misses += 1
            else:
                hits += 1
            if da is None:
                misses += 1
            else:
                hits += 1

            # Which inventory the observing node is in ("" = own); a pod is on the observing
            # node only if both its node name and its cluster match.
            if peers:
                obs_cluster = observer_cluster.get(obs)
                if obs_cluster is None:
                    obs_cluster = observer_cluster[obs] = self._observer_cluster(obs)
            else:
                obs_cluster = ""

            # Flow type (rules 1-6): is the local side the original source?
            if sa is not None and sa.node == obs and sa.cluster == obs_cluster:
                local_is_src = True  # rules 1 and 2
            elif da is not None and da.node == obs and da.cluster == obs_cluster:
                local_is_src = False  # rule 3
            elif sa is None and da is not None and da.node:
                local_is_src = True  # rule 4
            elif sa is not None and sa.node and da is None:
                local_is_src = False  # rule 5
            else:  # rule 6
                if res.example_unknown is None:
                    res.example_unknown = r
                if not keep_unknown:
                    res.dropped_unknown_direction += 1
                    continue
                res.kept_unknown_direction += 1
                local_is_src = True

            if local_is_src:
                la, ra = sa, da
                local_address, local_port, remote_address, remote_port = src, r.sport, dst, r.reply_sport
                out_bytes, out_packets = r.original_bytes, r.original_packets
                in_bytes, in_packets = r.reply_bytes, r.reply_packets
            else:
                la, ra = da, sa
                local_address, local_port, remote_address, remote_port = dst, r.reply_sport, src, r.sport
                out_bytes, out_packets = r.reply_bytes, r.reply_packets
                in_bytes, in_packets = r.original_bytes, r.original_packets
            if la is not None:
                local = endpoint(local_address, local_port, la)
            else:  # not a known pod, but seen on the observing node: that node, in its cluster
                local = Endpoint(
                    local_address, local_port, "", "", obs, "", "", zones[obs_cluster].get(obs, ""), "", "",
                    obs_cluster or cluster,
                )
            remote = (
                endpoint(remote_address, remote_port, ra) if ra is not None
                else Endpoint(remote_address, remote_port, "", "", "", "", "", "", "", "", UNKNOWN_CLUSTER)
            )

            transport = r.transport
            network_type = r.network_type
            start_ns = r.start_ns
            end_ns = r.end_ns
            append(Flow(_OUT, transport, network_type, local, remote, out_bytes, out_packets, "", {},
                        obs, start_ns, end_ns))
            append(Flow(_IN, transport, network_type, local, remote, in_bytes, in_packets, "", {},
                        obs, start_ns, end_ns))
            res.attributed += 1

        res.lookup_hits = hits
        res.lookup_misses = misses
        return res
