"""Conntrack records → OTLP metrics requests (DESIGN §4.1), written as wire bytes.

Per record up to four data points: bytes and packets, each for the
``original`` and the ``reply`` direction. All points of one record share one
attribute block (built once from cached pieces: addresses and ports repeat a
lot within a node's table), and always travel in the same request, so the
receiver can merge them back into one record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from kubenetmon.flows import ConntrackRecord
from kubenetmon.otlp import _contract as c
from kubenetmon.otlp._wire import (
    POINT_HEADER,
    delta_sum_metric,
    kv_int,
    kv_string,
    length_delimited,
    resource_metrics,
    string_field,
)

__all__ = ["encode_records_bytes", "resource_attributes"]

_KV_TAG = b"\x3a"  # NumberDataPoint.attributes (field 7)


class _FieldCache(dict[object, bytes]):
    """Value → encoded attribute field; built on first use."""

    def __init__(self, build: Callable[[object], bytes]) -> None:
        super().__init__()
        self._build = build

    def __missing__(self, key: object) -> bytes:
        value = self[key] = self._build(key)
        return value


def _point_attr(body: bytes) -> bytes:
    return length_delimited(0x3A, body)


def _string_attr(key: str) -> _FieldCache:
    return _FieldCache(lambda v: _point_attr(kv_string(key, str(v))))


def _int_attr(key: str) -> _FieldCache:
    return _FieldCache(lambda v: _point_attr(kv_int(key, int(v))))  # type: ignore[call-overload]


_DIR_ORIGINAL = _point_attr(kv_string(c.ATTR_DIRECTION, c.DIRECTION_ORIGINAL))
_DIR_REPLY = _point_attr(kv_string(c.ATTR_DIRECTION, c.DIRECTION_REPLY))


def resource_attributes(node: str, resource: Mapping[str, str]) -> dict[str, str]:
    """The resource attributes for one node: ``resource`` with the node filled in."""
    attrs = {c.RESOURCE_SERVICE_NAME: c.SERVICE_NAME_AGENT, **resource}
    attrs[c.RESOURCE_NODE_NAME] = node
    attrs.setdefault(c.RESOURCE_HOST_NAME, node)
    return attrs


def _resource_metrics(
    resource: Mapping[str, str], byte_points: list[bytes], packet_points: list[bytes], scope: bytes
) -> bytes:
    metrics = b""
    if byte_points:
        metrics += delta_sum_metric(c.METRIC_BYTES, "Bytes sent in one conntrack direction over the interval.",
                                    c.UNIT_BYTES, byte_points, c.TEMPORALITY_DELTA)
    if packet_points:
        metrics += delta_sum_metric(c.METRIC_PACKETS, "Packets sent in one conntrack direction over the interval.",
                                    c.UNIT_PACKETS, packet_points, c.TEMPORALITY_DELTA)
    return resource_metrics(resource, scope, metrics)


def _scope() -> bytes:
    from kubenetmon import __version__

    return string_field(0x0A, c.SCOPE_NAME) + string_field(0x12, __version__)


def encode_records_bytes(
    records: Sequence[ConntrackRecord], resource: Mapping[str, str], *, max_points: int | None = None
) -> list[bytes]:
    """Serialized ``ExportMetricsServiceRequest``s for ``records`` (see :func:`encode_records`)."""
    if max_points is not None and max_points < 4:
        raise ValueError(f"max_points must be at least 4 (one record's points), got {max_points}")
    default_node = resource.get(c.RESOURCE_NODE_NAME, "")
    by_node: dict[str, list[ConntrackRecord]] = {}
    for r in records:
        node = r.node or default_node
        if not node:
            raise ValueError(
                "a conntrack record has no node and the resource has no k8s.node.name: set "
                "resource k8s.node.name (e.g. ${NODE_NAME}) in the exporter config"
            )
        group = by_node.get(node)
        if group is None:
            by_node[node] = group = []
        group.append(r)

    transport = _string_attr(c.ATTR_NETWORK_TRANSPORT)
    net_type = _string_attr(c.ATTR_NETWORK_TYPE)
    src, sport = _string_attr(c.ATTR_SRC_ADDRESS), _int_attr(c.ATTR_SRC_PORT)
    dst, dport = _string_attr(c.ATTR_DST_ADDRESS), _int_attr(c.ATTR_DST_PORT)
    rsrc, rsport = _string_attr(c.ATTR_REPLY_SRC_ADDRESS), _int_attr(c.ATTR_REPLY_SRC_PORT)
    rdst, rdport = _string_attr(c.ATTR_REPLY_DST_ADDRESS), _int_attr(c.ATTR_REPLY_DST_PORT)
    pack = POINT_HEADER.pack
    scope = _scope()
    limit = max_points or 1 << 62

    requests: list[bytes] = []
    parts: list[bytes] = []  # ResourceMetrics of the request being filled
    in_request = 0
    for node, group in by_node.items():
        res = resource_attributes(node, resource)
        byte_points: list[bytes] = []
        packet_points: list[bytes] = []
        for r in group:
            ob, op, rb, rp = r.original_bytes, r.original_packets, r.reply_bytes, r.reply_packets
            n = (ob != 0) + (op != 0) + (rb != 0) + (rp != 0)
            if not n:
                continue
            if in_request + n > limit:
                if byte_points or packet_points:
                    parts.append(_resource_metrics(res, byte_points, packet_points, scope))
                    byte_points, packet_points = [], []
                requests.append(b"".join(parts))
                parts, in_request = [], 0
            in_request += n
            attrs = (
                transport[r.transport] + net_type[r.network_type]
                + src[r.src] + sport[r.sport] + dst[r.dst] + dport[r.dport]
            )
            if not (r.reply_src == r.dst and r.reply_sport == r.dport
                    and r.reply_dst == r.src and r.reply_dport == r.sport):
                attrs += rsrc[r.reply_src] + rsport[r.reply_sport] + rdst[r.reply_dst] + rdport[r.reply_dport]
            start, end = r.start_ns, r.end_ns
            orig_attrs = attrs + _DIR_ORIGINAL
            reply_attrs = attrs + _DIR_REPLY
            for value, target, point_attrs in (
                (ob, byte_points, orig_attrs),
                (rb, byte_points, reply_attrs),
                (op, packet_points, orig_attrs),
                (rp, packet_points, reply_attrs),
            ):
                if value:
                    body = pack(0x11, start, 0x19, end, 0x31, value) + point_attrs
                    target.append(length_delimited(0x0A, body))
        if byte_points or packet_points:
            parts.append(_resource_metrics(res, byte_points, packet_points, scope))
    if parts:
        requests.append(b"".join(parts))
    return requests
