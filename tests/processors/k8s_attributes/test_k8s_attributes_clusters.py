"""Several inventories (issue 13.3): traffic between clusters of one fleet is attributed on both ends
with the cluster names; a remote that no inventory knows gets cluster UNKNOWN."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from kubenetmon.flows import FlowBatch
from kubenetmon.processors.k8s_attributes import K8sAttributesConfig
from tests.fixtures.kubeapi import KubeAPIServer
from tests.processors.k8s_attributes.helpers import ProcessorMaker, eventually, kube_config, record
from tests.processors.k8s_attributes.test_k8s_attributes_static import static_config, write

EAST = """\
nodes:
  - {name: east-1, addresses: [10.0.0.1], zone: us-east-1a}
pods:
  - {name: client, namespace: shop, node: east-1, ips: [10.1.0.5, "fd00:e::5"],
     labels: {app.kubernetes.io/name: client}}
"""
WEST = """\
nodes:
  - {name: west-1, addresses: [10.50.0.1], zone: us-west-2b}
pods:
  - {name: server, namespace: db, node: west-1, ips: [10.51.0.7, "fd00:b::7"], labels: {app.kubernetes.io/name: pg}}
"""


def test_two_static_inventories_attribute_both_ends_with_their_cluster_names(
    tmp_path: Path, make_processor: ProcessorMaker
) -> None:
    east, west = tmp_path / "east.yaml", tmp_path / "west.yaml"
    write(east, EAST)
    write(west, WEST)
    config = static_config(east) | {"clusters": [
        {"name": "west", "source": "static", "static": {"path": str(west), "poll_interval": 0.05}}]}
    processor, sink = make_processor(config, cluster="east")
    # The same connection, seen by the client's node (east) and by the server's node (west).
    processor.consume(FlowBatch([
        record("10.1.0.5", "10.51.0.7", node="east-1", dport=5432),
        record("10.1.0.5", "10.51.0.7", node="west-1", dport=5432),
        record("fd00:e::5", "fd00:b::7", node="east-1", dport=5432),
    ]))
    seen_from_east, seen_from_west, seen_from_east6 = sink.flows[0], sink.flows[2], sink.flows[4]
    for out in (seen_from_east, seen_from_east6):
        assert (out.local.pod, out.local.cluster, out.local.availability_zone) == ("client", "east", "us-east-1a")
        assert (out.remote.pod, out.remote.cluster, out.remote.node, out.remote.availability_zone) == (
            "server", "west", "west-1", "us-west-2b")
        assert (out.bytes, out.remote.app) == (1000, "pg")
    assert (seen_from_west.local.pod, seen_from_west.local.cluster, seen_from_west.local.node) == (
        "server", "west", "west-1")
    assert (seen_from_west.remote.pod, seen_from_west.remote.cluster) == ("client", "east")
    assert seen_from_west.bytes == 5000  # the server's out flow carries the reply counters


def test_remote_outside_every_known_cluster_is_unknown_and_local_keeps_its_cluster(
    tmp_path: Path, make_processor: ProcessorMaker
) -> None:
    east, west = tmp_path / "east.yaml", tmp_path / "west.yaml"
    write(east, EAST)
    write(west, WEST)
    config = static_config(east) | {"clusters": [{"name": "west", "source": "static", "static": {"path": str(west)}}]}
    processor, sink = make_processor(config, cluster="east")
    processor.consume(FlowBatch([
        record("10.1.0.5", "203.0.113.9", node="east-1", dport=443),
        record("10.51.0.7", "203.0.113.9", node="west-1", dport=443),
        record("192.0.2.1", "198.51.100.2", node="east-1", dport=443),  # rule 6: nothing known
    ]))
    by_local = {f.local.address: f for f in sink.flows if f.direction == "out"}
    assert (by_local["10.1.0.5"].local.cluster, by_local["10.1.0.5"].remote.cluster) == ("east", "UNKNOWN")
    assert (by_local["10.51.0.7"].local.cluster, by_local["10.51.0.7"].remote.cluster) == ("west", "UNKNOWN")
    assert (by_local["192.0.2.1"].local.cluster, by_local["192.0.2.1"].local.node) == ("east", "east-1")
    assert by_local["192.0.2.1"].remote.cluster == "UNKNOWN"


@pytest.fixture
def peer_api() -> Iterator[KubeAPIServer]:
    with KubeAPIServer() as server:
        yield server


def test_a_peer_kubernetes_cluster_is_listed_with_its_own_kubeconfig(
    kubeapi: KubeAPIServer, peer_api: KubeAPIServer, tmp_path: Path, make_processor: ProcessorMaker
) -> None:
    kubeapi.add_node("east-1", internal_ips=["10.0.0.1"], zone="us-east-1a")
    kubeapi.add_pod("client", node="east-1", ip="10.1.0.5")
    peer_api.add_node("west-1", internal_ips=["10.50.0.1"], zone="us-west-2b")
    (tmp_path / "peer").mkdir()
    peer = kube_config(peer_api, tmp_path / "peer")
    config = kube_config(kubeapi, tmp_path) | {"clusters": [{"name": "west", **peer}]}
    processor, sink = make_processor(config, cluster="east")
    eventually(processor.is_ready, what="both clusters listed")
    peer_api.add_pod("server", node="west-1", ip="10.51.0.7")  # arrives through the peer's watch
    peer_index = processor.peers[0][1]
    eventually(lambda: "10.51.0.7" in peer_index.pod_by_ip, what="peer watch event")
    processor.consume(FlowBatch([record("10.1.0.5", "10.51.0.7", node="east-1")]))
    out = sink.flows[0]
    assert (out.local.pod, out.local.cluster) == ("client", "east")
    assert (out.remote.pod, out.remote.cluster, out.remote.availability_zone) == ("server", "west", "us-west-2b")
    assert processor.health() is None


def test_a_peer_that_is_not_listed_yet_holds_back_batches(
    kubeapi: KubeAPIServer, peer_api: KubeAPIServer, tmp_path: Path, make_processor: ProcessorMaker
) -> None:
    peer_api.hold_lists()
    (tmp_path / "peer").mkdir()
    peer = kube_config(peer_api, tmp_path / "peer")
    config = kube_config(kubeapi, tmp_path) | {"clusters": [{"name": "west", **peer}]}
    processor, _ = make_processor(config, cluster="east")
    eventually(lambda: peer_api.list_calls("pods") > 0, what="peer list request")
    assert not processor.is_ready()
    peer_api.release_lists()
    eventually(processor.is_ready, what="peer listed")


@pytest.mark.parametrize(
    ("clusters", "message"),
    [
        ([{"name": "w", "source": "static"}], "static::path is required"),
        ([{"name": "w"}], "kubernetes::kubeconfig is required"),
        ([{"name": "w", "source": "static", "static": {"path": "a"}},
          {"name": "w", "source": "static", "static": {"path": "b"}}], "repeated: w"),
        ([{"name": "UNKNOWN", "source": "static", "static": {"path": "a"}}], "'UNKNOWN' is reserved"),
    ],
)
def test_bad_cluster_lists_are_rejected_with_a_clear_message(clusters: list[object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        K8sAttributesConfig.model_validate({"clusters": clusters})


def test_a_peer_named_like_the_own_cluster_is_refused(tmp_path: Path, make_processor: ProcessorMaker) -> None:
    path = tmp_path / "east.yaml"
    write(path, EAST)
    config = static_config(path) | {"clusters": [{"name": "east", "source": "static", "static": {"path": str(path)}}]}
    with pytest.raises(ValueError, match="own cluster"):
        make_processor(config, cluster="east", start=False)
