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
   owner) and the zone of its node. A local endpoint without a pod still gets
   the observing node and its zone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kubenetmon.flows import ConntrackRecord, Endpoint, Flow
from kubenetmon.processors.k8s_attributes.index import Attrs, ClusterIndex

__all__ = ["Attributor", "BatchOutcome"]

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
    """Applies the decision procedure to records, reading a :class:`ClusterIndex`."""

    def __init__(
        self,
        index: ClusterIndex,
        *,
        cluster: str = "",
        keep_node_flows: bool = False,
        keep_unknown_direction: bool = True,
        owners: bool = False,
    ) -> None:
        self._index = index
        self._cluster = cluster
        self._keep_node_flows = keep_node_flows
        self._keep_unknown = keep_unknown_direction
        self._owners = owners

    def attribute(self, records: Iterable[ConntrackRecord], out: list[Flow]) -> BatchOutcome:
        """Append two flows per kept record to ``out``; return what was dropped and why."""
        # Bind everything the loop touches to locals: this loop is the hot path.
        index = self._index
        pod_by_ip = index.pod_by_ip
        node_by_ip = index.node_by_ip
        zone_of = index.zone_of
        rs_owner = index.rs_owner if self._owners else None
        cluster = self._cluster
        keep_nodes = self._keep_node_flows
        keep_unknown = self._keep_unknown
        append = out.append
        res = BatchOutcome()
        hits = misses = 0

        def endpoint(address: str, port: int, a: Attrs) -> Endpoint:
            owner_kind, owner_name = a.owner_kind, a.owner_name
            if rs_owner is None:
                owner_kind = owner_name = ""
            elif a.rs_key:
                resolved = rs_owner.get(a.rs_key)
                if resolved is not None:
                    owner_kind, owner_name = resolved
            node = a.node
            return Endpoint(
                address, port, a.pod, a.namespace, node, a.app, a.instance_id,
                zone_of.get(node, "") if node else "", "", "", cluster, "", "", owner_kind, owner_name,
            )

        for r in records:
            obs = r.node
            src = r.src
            dst = r.reply_src
            sa = node_by_ip.get(src)
            da = node_by_ip.get(dst)
            if sa is not None or da is not None:
                if not keep_nodes:
                    res.dropped_node_flow += 1
                    if res.example_node_flow is None:
                        res.example_node_flow = r
                    continue
                res.kept_node_flow += 1
            if sa is None:
                sa = pod_by_ip.get(src)
            if da is None:
                da = pod_by_ip.get(dst)
            if sa is None:
                misses += 1
            else:
                hits += 1
            if da is None:
                misses += 1
            else:
                hits += 1

            # Flow type (rules 1-6): is the local side the original source?
            if sa is not None and sa.node == obs:
                local_is_src = True  # rules 1 and 2
            elif da is not None and da.node == obs:
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
                local = (
                    endpoint(src, r.sport, la) if la is not None
                    else Endpoint(src, r.sport, "", "", obs, "", "", zone_of.get(obs, ""), "", "", cluster)
                )
                remote = endpoint(dst, r.reply_sport, ra) if ra is not None else Endpoint(dst, r.reply_sport)
                out_bytes, out_packets = r.original_bytes, r.original_packets
                in_bytes, in_packets = r.reply_bytes, r.reply_packets
            else:
                la, ra = da, sa
                local = (
                    endpoint(dst, r.reply_sport, la) if la is not None
                    else Endpoint(dst, r.reply_sport, "", "", obs, "", "", zone_of.get(obs, ""), "", "", cluster)
                )
                remote = endpoint(src, r.sport, ra) if ra is not None else Endpoint(src, r.sport)
                out_bytes, out_packets = r.reply_bytes, r.reply_packets
                in_bytes, in_packets = r.original_bytes, r.original_packets

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
