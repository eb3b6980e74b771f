"""The data that travels between pipeline stages (DESIGN §4.2).

Two views of the same traffic:

* :class:`ConntrackRecord` — the raw view a receiver produces: one conntrack
  entry's original and reply tuples and the four counter deltas for one
  interval, as seen by one node.
* :class:`Flow` — the attributed view a processor such as ``k8s_attributes``
  produces: one direction (``out`` or ``in``) relative to the local endpoint,
  with both endpoints described. One conntrack record becomes an ``out`` and
  an ``in`` flow, as in the original.

A :class:`FlowBatch` carries either or both. Records are plain slotted
dataclasses rather than protobuf objects: cheap to create in the hundreds of
thousands, and plugins read and set fields by name.

Addresses are canonical text (``inet_ntop`` form: ``10.0.0.1``, ``fd00::1``)
so that they hash, compare and print cheaply and the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "ConnectionClass",
    "ConntrackRecord",
    "Direction",
    "Endpoint",
    "Flow",
    "FlowBatch",
]


class Direction(StrEnum):
    """Direction of a :class:`Flow` relative to its local endpoint."""

    OUT = "out"  # bytes sent by the local endpoint
    IN = "in"  # bytes received by the local endpoint


class ConnectionClass(StrEnum):
    """Where the remote endpoint lies, as the original classifies it."""

    INTRA_VPC = "INTRA_VPC"
    INTRA_REGION = "INTRA_REGION"
    INTER_REGION = "INTER_REGION"
    PUBLIC_INTERNET = "PUBLIC_INTERNET"
    UNKNOWN = "UNKNOWN"


@dataclass(slots=True)
class ConntrackRecord:
    """One conntrack entry's counter deltas over ``[start_ns, end_ns)``.

    ``src``/``sport``/``dst``/``dport`` are the **original** tuple; the
    ``reply_*`` fields are the reply tuple (for a DNAT'd connection the reply
    source is the real backend behind the virtual address). ``original_*``
    counters are bytes and packets sent by the original source, ``reply_*``
    those sent back.
    """

    node: str
    transport: str  # "tcp" | "udp"
    network_type: str  # "ipv4" | "ipv6"
    src: str
    sport: int
    dst: str
    dport: int
    reply_src: str
    reply_sport: int
    reply_dst: str
    reply_dport: int
    original_bytes: int = 0
    original_packets: int = 0
    reply_bytes: int = 0
    reply_packets: int = 0
    start_ns: int = 0
    end_ns: int = 0

    def is_mirrored(self) -> bool:
        """True when the reply tuple is the plain mirror of the original (no NAT)."""
        return (
            self.reply_src == self.dst
            and self.reply_sport == self.dport
            and self.reply_dst == self.src
            and self.reply_dport == self.sport
        )


@dataclass(slots=True)
class Endpoint:
    """One side of a flow, described as far as it is known.

    Empty strings mean "not known"; they are what the ClickHouse table stores
    for unknown values, so no translation is needed on export.
    """

    address: str = ""
    port: int = 0
    pod: str = ""
    namespace: str = ""
    node: str = ""
    app: str = ""
    instance_id: str = ""
    availability_zone: str = ""
    cloud: str = ""
    region: str = ""
    cluster: str = ""
    cell: str = ""
    cloud_service: str = ""
    owner_kind: str = ""
    owner_name: str = ""


@dataclass(slots=True)
class Flow:
    """Bytes and packets in one direction between a local and a remote endpoint.

    The ``out`` and ``in`` flows made from one conntrack record may share
    their :class:`Endpoint` objects (so that classifying an endpoint is done
    once); ``connection_flags`` is never shared. A processor that wants to
    change one flow's endpoint without touching its twin replaces the
    endpoint (``dataclasses.replace``) instead of mutating it.
    """

    direction: str  # Direction value
    transport: str
    network_type: str
    local: Endpoint
    remote: Endpoint
    bytes: int = 0
    packets: int = 0
    connection_class: str = ""
    connection_flags: dict[str, bool] = field(default_factory=dict)
    observer: str = ""  # the node whose conntrack table saw the traffic
    start_ns: int = 0
    end_ns: int = 0


@dataclass(slots=True)
class FlowBatch:
    """What one stage hands to the next.

    ``records`` are raw conntrack deltas not yet attributed; ``flows`` are
    attributed. ``k8s_attributes`` moves records into flows; exporters use
    the view they understand.

    ``batch_id``, when a producer sets it, names the batch's content for
    idempotency: a producer that re-delivers a batch after a crash (the
    conntrack receiver's write-ahead checkpoint) uses the same id, so an
    exporter can pass it on and the peer can deduplicate. Empty: no id.
    """

    records: list[ConntrackRecord] = field(default_factory=list)
    flows: list[Flow] = field(default_factory=list)
    batch_id: str = ""

    def __len__(self) -> int:
        return len(self.records) + len(self.flows)

    def is_empty(self) -> bool:
        return not self.records and not self.flows

    def copy(self) -> FlowBatch:
        """A copy that a consumer may mutate without affecting this batch.

        Used by fan-outs feeding several pipelines. Endpoints are copied once
        per distinct object so that twins keep sharing within the copy.
        """
        records = [
            ConntrackRecord(
                r.node, r.transport, r.network_type, r.src, r.sport, r.dst, r.dport,
                r.reply_src, r.reply_sport, r.reply_dst, r.reply_dport,
                r.original_bytes, r.original_packets, r.reply_bytes, r.reply_packets,
                r.start_ns, r.end_ns,
            )
            for r in self.records
        ]
        copied: dict[int, Endpoint] = {}

        def endpoint(e: Endpoint) -> Endpoint:
            c = copied.get(id(e))
            if c is None:
                c = Endpoint(
                    e.address, e.port, e.pod, e.namespace, e.node, e.app, e.instance_id,
                    e.availability_zone, e.cloud, e.region, e.cluster, e.cell,
                    e.cloud_service, e.owner_kind, e.owner_name,
                )
                copied[id(e)] = c
            return c

        flows = [
            Flow(
                f.direction, f.transport, f.network_type, endpoint(f.local), endpoint(f.remote),
                f.bytes, f.packets, f.connection_class, dict(f.connection_flags),
                f.observer, f.start_ns, f.end_ns,
            )
            for f in self.flows
        ]
        return FlowBatch(records, flows, self.batch_id)
