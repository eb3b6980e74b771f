"""§4.4: attributed flows as OTLP metrics for any backend, with the documented attribute mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubenetmon.flows import Endpoint, Flow
from kubenetmon.otlp import FLOW_ATTRIBUTES, encode_flows
from tests.otlp.otlp_testkit import SECOND, T0


def attrs(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        if which == "kvlist_value":
            out[kv.key] = {x.key: x.value.bool_value for x in kv.value.kvlist_value.values}
        else:
            out[kv.key] = getattr(kv.value, which)
    return out


def twin_flows() -> list[Flow]:
    local = Endpoint(address="10.244.1.5", port=40000, pod="api-7d9", namespace="shop", node="node-a",
                     app="api", instance_id="i-0abc", availability_zone="us-west-2a", cloud="aws",
                     region="us-west-2", cluster="prod", cell="c1", owner_kind="Deployment", owner_name="api")
    remote = Endpoint(address="52.216.1.1", port=443, cloud="aws", region="us-west-2", cloud_service="S3")
    common: dict[str, Any] = {"transport": "tcp", "network_type": "ipv4", "local": local, "remote": remote,
                              "connection_class": "INTRA_REGION", "observer": "node-a",
                              "start_ns": T0, "end_ns": T0 + 60 * SECOND}
    return [
        Flow(direction="out", bytes=1200, packets=10, connection_flags={"NAT_GATEWAY": True, "A": False}, **common),
        Flow(direction="in", bytes=98000, packets=70, **common),
        Flow(direction="in", bytes=0, packets=0, **common),  # nothing to send
    ]


def points(request: Any) -> dict[str, list[Any]]:
    return {m.name: list(m.sum.data_points) for rm in request.resource_metrics
            for sm in rm.scope_metrics for m in sm.metrics}


def test_flows_become_delta_sums_with_semantic_convention_attributes() -> None:
    (request,) = encode_flows(twin_flows(), {"service.name": "kubenetmon-gateway", "k8s.cluster.name": "prod"})
    rm = request.resource_metrics[0]
    assert attrs(rm.resource.attributes) == {"service.name": "kubenetmon-gateway", "k8s.cluster.name": "prod"}
    metrics = {m.name: m for sm in rm.scope_metrics for m in sm.metrics}
    assert set(metrics) == {"kubenetmon.flow.bytes", "kubenetmon.flow.packets"}
    assert metrics["kubenetmon.flow.bytes"].unit == "By"
    for m in metrics.values():
        assert m.sum.aggregation_temporality == 1 and m.sum.is_monotonic
    out_point, in_point = metrics["kubenetmon.flow.bytes"].sum.data_points
    assert (out_point.as_int, in_point.as_int) == (1200, 98000)
    assert (out_point.start_time_unix_nano, out_point.time_unix_nano) == (T0, T0 + 60 * SECOND)
    a = attrs(out_point.attributes)
    assert a == {
        "network.transport": "tcp",
        "network.type": "ipv4",
        "kubenetmon.direction": "out",
        "kubenetmon.connection.class": "INTRA_REGION",
        "kubenetmon.local.address": "10.244.1.5",
        "kubenetmon.local.port": 40000,
        "kubenetmon.local.k8s.pod.name": "api-7d9",
        "kubenetmon.local.k8s.namespace.name": "shop",
        "kubenetmon.local.k8s.node.name": "node-a",
        "kubenetmon.local.app": "api",
        "kubenetmon.local.host.id": "i-0abc",
        "kubenetmon.local.cloud.availability_zone": "us-west-2a",
        "kubenetmon.local.cloud.provider": "aws",
        "kubenetmon.local.cloud.region": "us-west-2",
        "kubenetmon.local.k8s.cluster.name": "prod",
        "kubenetmon.local.kubenetmon.cell": "c1",
        "kubenetmon.local.k8s.owner.kind": "Deployment",
        "kubenetmon.local.k8s.owner.name": "api",
        "kubenetmon.remote.address": "52.216.1.1",
        "kubenetmon.remote.port": 443,
        "kubenetmon.remote.cloud.provider": "aws",
        "kubenetmon.remote.cloud.region": "us-west-2",
        "kubenetmon.remote.kubenetmon.cloud_service": "S3",
        "kubenetmon.observer.k8s.node.name": "node-a",
        "kubenetmon.connection.flags": {"A": False, "NAT_GATEWAY": True},
    }
    assert "kubenetmon.connection.flags" not in attrs(in_point.attributes)


def test_zero_flow_points_are_not_sent_and_max_points_splits() -> None:
    flows = twin_flows() * 5
    requests = encode_flows(flows, {}, max_points=4)
    sizes = [sum(len(p) for p in points(r).values()) for r in requests]
    assert all(0 < s <= 4 for s in sizes) and sum(sizes) == 2 * 2 * 5
    assert attrs(requests[0].resource_metrics[0].resource.attributes) == {"service.name": "kubenetmon"}


def test_every_attribute_in_the_mapping_is_documented_in_the_exporter_readme() -> None:
    readme = (Path(__file__).parents[2] / "kubenetmon/exporters/otlp/README.md").read_text()
    missing = [name for name in FLOW_ATTRIBUTES.values() if f"`{name}`" not in readme]
    assert missing == []
