"""The decision procedure (reference §5.4), rule by rule, with exact expectations.

The index is filled from API-shaped objects through the same parser the
sources use. Conventions: node-a (10.0.0.1, zone za) observes; node-b
(10.0.0.2, zone zb) and node-c (10.0.0.3, zone zc) are other nodes. Records
carry original counters (1000 B, 10 p) and reply counters (5000 B, 20 p).
"""

from __future__ import annotations

from typing import Any

import pytest

from kubenetmon.flows import ConntrackRecord, Endpoint, Flow, FlowBatch
from kubenetmon.processors.k8s_attributes import Attributor, BatchOutcome, ClusterIndex, ObjectParser
from kubenetmon.processors.k8s_attributes.vector import VectorAttributor
from tests.fixtures.kubeapi import make_node, make_pod, make_replicaset
from tests.processors.k8s_attributes.helpers import record

CLUSTER = "prod-1"


def build_index(parser: ObjectParser | None = None, extra_pods: list[dict[str, Any]] | None = None) -> ClusterIndex:
    parser = parser or ObjectParser()
    index = ClusterIndex()
    index.replace_nodes([
        parser.node(make_node("node-a", internal_ips=["10.0.0.1", "fd00::a:1"], zone="za")),
        parser.node(make_node("node-b", internal_ips=["10.0.0.2"], zone="zb")),
        parser.node(make_node("node-c", internal_ips=["10.0.0.3"], zone="zc")),
    ])
    pods = [
        make_pod("client-a", node="node-a", ip="10.1.0.5",
                 labels={"app.kubernetes.io/name": "client", "control-plane-id": "cp-1"}),
        make_pod("server-a", "infra", node="node-a", ip="10.1.0.6", labels={"k8s-app": "local-server"}),
        make_pod("server-b", "shop", node="node-b", ip="10.2.0.7",
                 labels={"app.kubernetes.io/name": "server", "k8s-app": "ignored", "control-plane-id": "cp-2"}),
        make_pod("worker-c", node="node-c", ip="10.3.0.8", labels={"app.kubernetes.io/name": "worker"}),
        make_pod("client6", node="node-a", ip="fd00:1::5", labels={"app.kubernetes.io/name": "client6"}),
        make_pod("server6", node="node-b", ips=["10.2.0.66", "fd00:0002:0000:0000:0000:0000:0000:0007"],
                 labels={"app.kubernetes.io/name": "server6"}),
        *(extra_pods or []),
    ]
    index.replace_pods([parser.pod(p) for p in pods])
    return index


def attribute(
    records: list[ConntrackRecord], index: ClusterIndex | None = None, **options: Any
) -> tuple[list[Flow], BatchOutcome]:
    """Both engines, which must agree: the columnar one (what the processor runs) and the row path,
    whose rows are returned (they also show which endpoints a record's two flows share)."""
    index = index or build_index()
    flows: list[Flow] = []
    outcome = Attributor(index, cluster=CLUSTER, **options).attribute(records, flows)
    table, vector_outcome = VectorAttributor(index, cluster=CLUSTER, **options).attribute_table(
        FlowBatch(records).record_table())
    vector_flows = FlowBatch(flows=table).flows
    assert vector_flows == flows
    assert vector_outcome == outcome
    return flows, outcome


def pod_endpoint(  # noqa: PLR0917 - reads like the Endpoint it builds
    address: str, port: int, pod: str, namespace: str, node: str, zone: str, app: str = "",
    instance_id: str = "", cluster: str = CLUSTER,
) -> Endpoint:
    return Endpoint(address=address, port=port, pod=pod, namespace=namespace, node=node, app=app,
                    instance_id=instance_id, availability_zone=zone, cluster=cluster)


CLIENT_A = pod_endpoint("10.1.0.5", 40000, "client-a", "default", "node-a", "za", "client", "cp-1")
SERVER_B_80 = pod_endpoint("10.2.0.7", 80, "server-b", "shop", "node-b", "zb", "server", "cp-2")


def assert_pair(flows: list[Flow], local: Endpoint, remote: Endpoint, *, out: tuple[int, int],
                in_: tuple[int, int], observer: str = "node-a") -> None:
    assert [f.direction for f in flows] == ["out", "in"]
    out_flow, in_flow = flows
    for f in flows:
        assert f.local == local
        assert f.remote == remote
        assert f.observer == observer
        assert f.transport == "tcp"
        assert (f.start_ns, f.end_ns) == (1_000, 2_000)
        assert f.connection_flags == {}
    assert (out_flow.bytes, out_flow.packets) == out
    assert (in_flow.bytes, in_flow.packets) == in_


ORIGINAL = (1000, 10)
REPLY = (5000, 20)


def test_rule1_pods_both_on_observing_node_local_is_original_source() -> None:
    flows, outcome = attribute([record("10.1.0.5", "10.1.0.6")])
    assert_pair(
        flows, CLIENT_A, pod_endpoint("10.1.0.6", 80, "server-a", "infra", "node-a", "za", "local-server"),
        out=ORIGINAL, in_=REPLY,
    )
    assert outcome.attributed == 1
    assert (outcome.lookup_hits, outcome.lookup_misses) == (2, 0)


def test_rule2_pod_on_node_to_pod_on_another_node() -> None:
    flows, _ = attribute([record("10.1.0.5", "10.2.0.7")])
    assert_pair(flows, CLIENT_A, SERVER_B_80, out=ORIGINAL, in_=REPLY)


def test_rule3_connection_into_pod_on_node_local_is_reply_source_with_counters_swapped() -> None:
    flows, _ = attribute([record("10.2.0.7", "10.1.0.6", sport=51000, dport=80)])
    assert_pair(
        flows,
        pod_endpoint("10.1.0.6", 80, "server-a", "infra", "node-a", "za", "local-server"),
        pod_endpoint("10.2.0.7", 51000, "server-b", "shop", "node-b", "zb", "server", "cp-2"),
        out=REPLY, in_=ORIGINAL,
    )


def test_rule4_unknown_source_to_pod_on_another_node_source_is_local_on_observing_node() -> None:
    flows, outcome = attribute([record("203.0.113.9", "10.2.0.7")])
    local = Endpoint(address="203.0.113.9", port=40000, node="node-a", availability_zone="za", cluster=CLUSTER)
    assert_pair(flows, local, SERVER_B_80, out=ORIGINAL, in_=REPLY)
    assert (outcome.lookup_hits, outcome.lookup_misses) == (1, 1)


def test_rule5_pod_on_another_node_to_unknown_destination_destination_is_local() -> None:
    flows, _ = attribute([record("10.2.0.7", "198.51.100.4", sport=41000, dport=443)])
    local = Endpoint(address="198.51.100.4", port=443, node="node-a", availability_zone="za", cluster=CLUSTER)
    remote = pod_endpoint("10.2.0.7", 41000, "server-b", "shop", "node-b", "zb", "server", "cp-2")
    assert_pair(flows, local, remote, out=REPLY, in_=ORIGINAL)


def test_rule6_both_unknown_is_kept_with_original_source_as_local_by_default() -> None:
    flows, outcome = attribute([record("203.0.113.9", "198.51.100.4")])
    local = Endpoint(address="203.0.113.9", port=40000, node="node-a", availability_zone="za", cluster=CLUSTER)
    assert_pair(flows, local, Endpoint(address="198.51.100.4", port=80, cluster="UNKNOWN"), out=ORIGINAL, in_=REPLY)
    assert outcome.kept_unknown_direction == 1
    assert outcome.dropped_unknown_direction == 0


def test_rule6_both_pods_on_other_nodes_keeps_source_pod_fields() -> None:
    flows, outcome = attribute([record("10.2.0.7", "10.3.0.8", sport=41000)])
    assert_pair(
        flows,
        pod_endpoint("10.2.0.7", 41000, "server-b", "shop", "node-b", "zb", "server", "cp-2"),
        pod_endpoint("10.3.0.8", 80, "worker-c", "default", "node-c", "zc", "worker"),
        out=ORIGINAL, in_=REPLY,
    )
    assert outcome.kept_unknown_direction == 1


def test_rule6_unknown_direction_is_dropped_when_configured() -> None:
    flows, outcome = attribute(
        [record("203.0.113.9", "198.51.100.4"), record("10.1.0.5", "10.2.0.7")], keep_unknown_direction=False
    )
    assert outcome.dropped_unknown_direction == 1
    assert outcome.example_unknown is not None and outcome.example_unknown.src == "203.0.113.9"
    assert outcome.attributed == 1
    assert len(flows) == 2 and flows[0].local.pod == "client-a"


def test_dnat_clusterip_is_attributed_to_backend_pod_via_reply_source() -> None:
    r = record("10.1.0.5", "10.96.0.10", dport=80, reply_src="10.2.0.7", reply_sport=8080)
    flows, _ = attribute([r])
    remote = pod_endpoint("10.2.0.7", 8080, "server-b", "shop", "node-b", "zb", "server", "cp-2")
    assert_pair(flows, CLIENT_A, remote, out=ORIGINAL, in_=REPLY)
    assert all("10.96.0.10" not in (f.local.address, f.remote.address) for f in flows)


def test_dnat_to_backend_on_same_node_is_between_pods_on_node() -> None:
    r = record("10.1.0.5", "10.96.0.10", reply_src="10.1.0.6", reply_sport=8443)
    flows, _ = attribute([r])
    remote = pod_endpoint("10.1.0.6", 8443, "server-a", "infra", "node-a", "za", "local-server")
    assert_pair(flows, CLIENT_A, remote, out=ORIGINAL, in_=REPLY)


def test_nodeport_with_snat_is_attributed_to_backend_pod_as_local() -> None:
    # An external client hits node-b's NodePort; node-b DNATs to server-b and SNATs to itself.
    r = record("203.0.113.9", "10.0.0.2", node="node-b", sport=50000, dport=30080,
               reply_src="10.2.0.7", reply_sport=8080, reply_dst="10.0.0.2")
    flows, _ = attribute([r])
    local = pod_endpoint("10.2.0.7", 8080, "server-b", "shop", "node-b", "zb", "server", "cp-2")
    assert_pair(flows, local, Endpoint(address="203.0.113.9", port=50000, cluster="UNKNOWN"), out=REPLY, in_=ORIGINAL,
                observer="node-b")


@pytest.mark.parametrize(
    ("src", "dst"),
    [("10.0.0.1", "10.2.0.7"), ("10.1.0.5", "10.0.0.2"), ("fd00::a:1", "fd00:1::5")],
    ids=["node-source", "node-reply-source", "ipv6-node-source"],
)
def test_node_flow_is_dropped_by_default(src: str, dst: str) -> None:
    flows, outcome = attribute([record(src, dst)])
    assert flows == []
    assert outcome.dropped_node_flow == 1
    assert outcome.example_node_flow is not None and outcome.example_node_flow.src == src


def test_node_flow_is_attributed_to_the_node_when_kept() -> None:
    flows, outcome = attribute([record("10.0.0.1", "10.2.0.7", sport=40000)], keep_node_flows=True)
    local = Endpoint(address="10.0.0.1", port=40000, node="node-a", availability_zone="za", cluster=CLUSTER)
    assert_pair(flows, local, SERVER_B_80, out=ORIGINAL, in_=REPLY)
    assert outcome.kept_node_flow == 1


def test_node_flow_to_remote_node_when_kept_has_remote_node_and_zone() -> None:
    flows, _ = attribute([record("10.1.0.5", "10.0.0.2", dport=10250)], keep_node_flows=True)
    remote = Endpoint(address="10.0.0.2", port=10250, node="node-b", availability_zone="zb", cluster=CLUSTER)
    assert_pair(flows, CLIENT_A, remote, out=ORIGINAL, in_=REPLY)


def test_host_network_pod_is_not_indexed_its_traffic_is_node_traffic() -> None:
    host_pod = make_pod("node-exporter", node="node-b", ip="10.0.0.2", host_network=True,
                        labels={"app.kubernetes.io/name": "node-exporter"})
    index = build_index(extra_pods=[host_pod])
    assert "10.0.0.2" not in index.pod_by_ip
    flows, outcome = attribute([record("10.1.0.5", "10.0.0.2", dport=9100)], index)
    assert flows == [] and outcome.dropped_node_flow == 1
    flows, _ = attribute([record("10.1.0.5", "10.0.0.2", dport=9100)], index, keep_node_flows=True)
    assert flows[0].remote.pod == "" and flows[0].remote.node == "node-b"


def test_finished_pod_sharing_ip_with_running_pod_loses() -> None:
    old = make_pod("job-old", node="node-b", ip="10.2.0.50", phase="Succeeded", created="2024-02-01T00:00:00Z")
    new = make_pod("web-new", node="node-b", ip="10.2.0.50", created="2024-01-01T00:00:00Z",
                   labels={"app.kubernetes.io/name": "web"})
    flows, _ = attribute([record("10.1.0.5", "10.2.0.50")], build_index(extra_pods=[old, new]))
    assert flows[0].remote.pod == "web-new"
    assert flows[0].remote.app == "web"


def test_newest_running_pod_wins_an_ip_shared_by_running_pods() -> None:
    older = make_pod("a-older", node="node-b", ip="10.2.0.51", created="2024-01-01T00:00:00Z")
    newer = make_pod("z-newer", node="node-c", ip="10.2.0.51", created="2024-03-01T00:00:00Z")
    index = build_index(extra_pods=[newer, older])
    assert index.shared_ip_count() == 1
    flows, _ = attribute([record("10.1.0.5", "10.2.0.51")], index)
    assert (flows[0].remote.pod, flows[0].remote.node, flows[0].remote.availability_zone) == (
        "z-newer", "node-c", "zc")
    index.remove_pod("default/z-newer")
    flows, _ = attribute([record("10.1.0.5", "10.2.0.51")], index)
    assert flows[0].remote.pod == "a-older"


def test_failed_pod_alone_on_an_ip_does_not_attribute_it() -> None:
    failed = make_pod("crashed", node="node-b", ip="10.2.0.52", phase="Failed")
    flows, outcome = attribute([record("10.1.0.5", "10.2.0.52")], build_index(extra_pods=[failed]))
    assert flows[1].remote == Endpoint(address="10.2.0.52", port=80, cluster="UNKNOWN")
    assert outcome.lookup_misses == 1


def test_ipv6_flow_is_attributed_like_ipv4() -> None:
    flows, _ = attribute([record("fd00:1::5", "fd00:2::7", sport=40000, dport=80)])
    local = pod_endpoint("fd00:1::5", 40000, "client6", "default", "node-a", "za", "client6")
    remote = pod_endpoint("fd00:2::7", 80, "server6", "default", "node-b", "zb", "server6")
    assert_pair(flows, local, remote, out=ORIGINAL, in_=REPLY)
    assert all(f.network_type == "ipv6" for f in flows)


def test_out_and_in_flows_share_endpoints_but_not_flags() -> None:
    flows, _ = attribute([record("10.1.0.5", "10.2.0.7")])
    assert flows[0].local is flows[1].local and flows[0].remote is flows[1].remote
    assert flows[0].connection_flags is not flows[1].connection_flags


def test_app_and_instance_labels_are_configurable() -> None:
    parser = ObjectParser(app_labels=["team"], instance_id_labels=["shard"], zone_labels=["rack"])
    index = ClusterIndex()
    index.replace_nodes([parser.node(make_node("node-a", internal_ips=["10.0.0.1"], zone="za",
                                               labels={"rack": "r7"}))])
    index.replace_pods([parser.pod(make_pod("p", node="node-a", ip="10.1.0.9",
                                            labels={"team": "payments", "shard": "s3",
                                                    "app.kubernetes.io/name": "unused"}))])
    flows, _ = attribute([record("10.1.0.9", "203.0.113.1")], index)
    assert (flows[0].local.app, flows[0].local.instance_id, flows[0].local.availability_zone) == (
        "payments", "s3", "r7")


def test_owners_resolve_replicaset_to_deployment() -> None:
    parser = ObjectParser()
    pods = [
        make_pod("web-abc-1", node="node-b", ip="10.2.0.60", owner=("ReplicaSet", "web-abc")),
        make_pod("db-0", node="node-b", ip="10.2.0.61", owner=("StatefulSet", "db")),
        make_pod("orphan-rs-1", node="node-b", ip="10.2.0.62", owner=("ReplicaSet", "orphan-rs")),
    ]
    index = build_index(parser, extra_pods=pods)
    index.replace_replicasets([parser.replicaset(make_replicaset("web-abc", owner=("Deployment", "web")))])
    records = [record("10.1.0.5", ip) for ip in ("10.2.0.60", "10.2.0.61", "10.2.0.62")]
    flows, _ = attribute(records, index, owners=True)
    owners = [(f.remote.owner_kind, f.remote.owner_name) for f in flows[::2]]
    assert owners == [("Deployment", "web"), ("StatefulSet", "db"), ("ReplicaSet", "orphan-rs")]
    flows, _ = attribute(records, index, owners=False)
    assert {(f.remote.owner_kind, f.remote.owner_name) for f in flows} == {("", "")}


def test_pod_without_node_yet_gives_unknown_direction() -> None:
    # Scheduled pods get a node before an IP; an IP without a node is stale data, not "local".
    pending = make_pod("pending", ip="10.2.0.70", phase="Pending")
    flows, outcome = attribute([record("203.0.113.9", "10.2.0.70")], build_index(extra_pods=[pending]))
    assert outcome.kept_unknown_direction == 1
    assert flows[0].remote.pod == "pending"


def test_udp_records_keep_their_transport() -> None:
    flows, _ = attribute([record("10.1.0.5", "10.2.0.7", transport="udp", dport=53)])
    assert [f.transport for f in flows] == ["udp", "udp"]
