"""Attributed flows → OTLP metrics for any backend (DESIGN §4.4).

Two metrics, ``kubenetmon.flow.bytes`` and ``kubenetmon.flow.packets`` (Sum,
monotonic, DELTA, int), one point each per flow. Attribute names follow the
OpenTelemetry semantic conventions where a name exists, under the
``kubenetmon.local.`` / ``kubenetmon.remote.`` prefixes; empty strings and
port 0 mean "not known" and are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kubenetmon.flows import Endpoint, Flow
from kubenetmon.otlp import _contract as c
from kubenetmon.otlp._wire import (
    POINT_HEADER,
    delta_sum_metric,
    kv_bool,
    kv_int,
    kv_kvlist,
    kv_string,
    length_delimited,
    resource_metrics,
    string_field,
)

__all__ = ["ENDPOINT_ATTRIBUTES", "FLOW_ATTRIBUTES", "encode_flows_bytes"]

# Endpoint field → attribute name (after the kubenetmon.local./kubenetmon.remote. prefix).
ENDPOINT_ATTRIBUTES: dict[str, str] = {
    "address": "address",
    "port": "port",
    "pod": "k8s.pod.name",
    "namespace": "k8s.namespace.name",
    "node": "k8s.node.name",
    "app": "app",
    "instance_id": "host.id",
    "availability_zone": "cloud.availability_zone",
    "cloud": "cloud.provider",
    "region": "cloud.region",
    "cluster": "k8s.cluster.name",
    "cell": "kubenetmon.cell",
    "cloud_service": "kubenetmon.cloud_service",
    "owner_kind": "k8s.owner.kind",
    "owner_name": "k8s.owner.name",
}

# Flow field → attribute name; endpoints expand per ENDPOINT_ATTRIBUTES.
FLOW_ATTRIBUTES: dict[str, str] = {
    "transport": "network.transport",
    "network_type": "network.type",
    "direction": "kubenetmon.direction",
    "connection_class": "kubenetmon.connection.class",
    **{f"local.{k}": f"kubenetmon.local.{v}" for k, v in ENDPOINT_ATTRIBUTES.items()},
    **{f"remote.{k}": f"kubenetmon.remote.{v}" for k, v in ENDPOINT_ATTRIBUTES.items()},
    "observer": "kubenetmon.observer.k8s.node.name",
    "connection_flags": "kubenetmon.connection.flags",
}


def _attr(body: bytes) -> bytes:
    return length_delimited(0x3A, body)


def _endpoint_block(prefix: str, e: Endpoint) -> bytes:
    out = []
    for field_name, attr in ENDPOINT_ATTRIBUTES.items():
        value = getattr(e, field_name)
        if not value:
            continue
        key = prefix + attr
        out.append(_attr(kv_int(key, value) if field_name == "port" else kv_string(key, value)))
    return b"".join(out)


def _request(resource: Mapping[str, str], scope: bytes, byte_points: list[bytes], packet_points: list[bytes]) -> bytes:
    metrics = b""
    if byte_points:
        metrics += delta_sum_metric(c.METRIC_FLOW_BYTES, "Bytes of one attributed flow direction over the interval.",
                                    c.UNIT_BYTES, byte_points, c.TEMPORALITY_DELTA)
    if packet_points:
        metrics += delta_sum_metric(c.METRIC_FLOW_PACKETS,
                                    "Packets of one attributed flow direction over the interval.",
                                    c.UNIT_PACKETS, packet_points, c.TEMPORALITY_DELTA)
    return resource_metrics(resource, scope, metrics)


def encode_flows_bytes(
    flows: Sequence[Flow], resource: Mapping[str, str], *, max_points: int | None = None
) -> list[bytes]:
    """Serialized requests for ``flows`` (see :func:`kubenetmon.otlp.encode_flows`)."""
    from kubenetmon import __version__

    if max_points is not None and max_points < 2:
        raise ValueError(f"max_points must be at least 2 (one flow's points), got {max_points}")
    res = {c.RESOURCE_SERVICE_NAME: "kubenetmon", **resource}
    scope = string_field(0x0A, c.SCOPE_NAME) + string_field(0x12, __version__)
    limit = max_points or 1 << 62
    strings: dict[tuple[str, str], bytes] = {}
    endpoints: dict[tuple[str, int], bytes] = {}  # flows hold their endpoints: ids are stable here
    local_prefix, remote_prefix = "kubenetmon.local.", "kubenetmon.remote."

    def string_attr(key: str, value: str) -> bytes:
        b = strings.get((key, value))
        if b is None:
            b = strings[(key, value)] = _attr(kv_string(key, value)) if value else b""
        return b

    requests: list[bytes] = []
    byte_points: list[bytes] = []
    packet_points: list[bytes] = []
    pack = POINT_HEADER.pack
    for f in flows:
        n = (f.bytes != 0) + (f.packets != 0)
        if not n:
            continue
        if len(byte_points) + len(packet_points) + n > limit:
            requests.append(_request(res, scope, byte_points, packet_points))
            byte_points, packet_points = [], []
        local = endpoints.get((local_prefix, id(f.local)))
        if local is None:
            local = endpoints[(local_prefix, id(f.local))] = _endpoint_block(local_prefix, f.local)
        remote = endpoints.get((remote_prefix, id(f.remote)))
        if remote is None:
            remote = endpoints[(remote_prefix, id(f.remote))] = _endpoint_block(remote_prefix, f.remote)
        attrs = (
            string_attr("network.transport", f.transport)
            + string_attr("network.type", f.network_type)
            + string_attr("kubenetmon.direction", f.direction)
            + string_attr("kubenetmon.connection.class", f.connection_class)
            + local
            + remote
            + string_attr("kubenetmon.observer.k8s.node.name", f.observer)
        )
        if f.connection_flags:
            attrs += _attr(kv_kvlist(
                "kubenetmon.connection.flags",
                [kv_bool(k, bool(v)) for k, v in sorted(f.connection_flags.items())],
            ))
        if f.bytes:
            byte_points.append(length_delimited(0x0A, pack(0x11, f.start_ns, 0x19, f.end_ns, 0x31, f.bytes) + attrs))
        if f.packets:
            packet_points.append(
                length_delimited(0x0A, pack(0x11, f.start_ns, 0x19, f.end_ns, 0x31, f.packets) + attrs)
            )
    if byte_points or packet_points:
        requests.append(_request(res, scope, byte_points, packet_points))
    return requests
