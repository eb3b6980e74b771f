"""The mini-cluster itself, against the kernel: the ground truth the pipeline tests rely on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubenetmon.demo.conntrack_table import ConntrackEntry, read_conntrack
from kubenetmon.demo.expected import attribute, pair_totals
from kubenetmon.demo.minicluster import MiniCluster, PodSpec, Topology, default_topology
from kubenetmon.demo.pipeline import MeteringPipeline, PipelineSettings
from kubenetmon.demo.traffic import Exchange, PeerServer, run_exchanges
from kubenetmon.netns import list_namespaces
from tests.e2e.harness import INTERNET_HOST, PREFIX, S3_OTHER_REGION, require_root

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

PORT = 7100


@pytest.fixture(scope="module")
def servers(cluster: MiniCluster) -> Iterator[None]:
    peers = [PeerServer(p.netns, ip, PORT) for p in cluster.pods.values() for ip in p.ips]
    assert cluster.public is not None
    peers += [PeerServer(cluster.public.netns, ip, PORT) for ip in cluster.public.addresses]
    yield
    for peer in peers:
        peer.stop()


def _entry(entries: list[ConntrackEntry], sport: int) -> ConntrackEntry:
    found = [e for e in entries if e.sport == sport]
    assert len(found) == 1, f"expected one entry with source port {sport}, got {found}"
    return found[0]


def test_cross_node_connection_is_counted_identically_by_both_nodes(cluster: MiniCluster, servers: None) -> None:
    frontend, catalog = cluster.pods["frontend-0"], cluster.pods["catalog-0"]
    assert frontend.ipv6 and catalog.ipv6
    results = run_exchanges([
        Exchange(frontend.netns, catalog.ipv4, PORT, "tcp", 3000, 20000, rounds=3),
        Exchange(frontend.netns, catalog.ipv6, PORT, "tcp", 500, 100, rounds=2),
    ])
    assert [r.error for r in results] == ["", ""]
    node_a = read_conntrack(cluster.nodes["node-a"].netns)
    node_b = read_conntrack(cluster.nodes["node-b"].netns)
    for result in results:
        seen_a, seen_b = _entry(node_a, result.client_port), _entry(node_b, result.client_port)
        counters = ("original_bytes", "original_packets", "reply_bytes", "reply_packets")
        assert [getattr(seen_a, c) for c in counters] == [getattr(seen_b, c) for c in counters]
        # TCP: every byte of payload plus at least a minimal header per packet.
        header = 40 if seen_a.network_type == "ipv4" else 60
        assert seen_a.original_bytes >= result.sent_payload + header * seen_a.original_packets
        assert seen_a.original_bytes <= result.sent_payload + (header + 40) * seen_a.original_packets
        assert seen_a.reply_bytes >= result.received_payload + header * seen_a.reply_packets


def test_udp_bytes_are_exactly_payload_plus_ip_and_udp_headers(cluster: MiniCluster, servers: None) -> None:
    checkout, payments = cluster.pods["checkout-0"], cluster.pods["payments-0"]
    assert payments.ipv6
    results = run_exchanges([
        Exchange(checkout.netns, payments.ipv4, PORT, "udp", 700, 1300, rounds=5),
        Exchange(checkout.netns, payments.ipv6, PORT, "udp", 200, 900, rounds=4),
    ])
    entries = read_conntrack(cluster.nodes["node-b"].netns)
    for result, header in zip(results, (28, 48), strict=True):
        assert result.error == ""
        entry = _entry(entries, result.client_port)
        assert (entry.original_packets, entry.reply_packets) == (result.datagrams, result.datagrams)
        assert entry.original_bytes == result.sent_payload + header * result.datagrams
        assert entry.reply_bytes == result.received_payload + header * result.datagrams


def test_cluster_ip_is_dnated_to_its_backend_in_the_client_node(cluster: MiniCluster, servers: None) -> None:
    search, frontend = cluster.pods["search-0"], cluster.pods["frontend-0"]
    service = cluster.add_cluster_ip("search", search, port=80, target_port=PORT)
    (result,) = run_exchanges([Exchange(frontend.netns, service.cluster_ip, 80, "tcp", 100, 4000)])
    assert result.error == ""
    client_side = _entry(read_conntrack(cluster.nodes["node-a"].netns), result.client_port)
    assert (client_side.dst, client_side.dport) == (service.cluster_ip, 80)
    assert (client_side.reply_src, client_side.reply_sport) == (search.ipv4, PORT)
    server_side = _entry(read_conntrack(cluster.nodes["node-b"].netns), result.client_port)
    assert server_side.dst == search.ipv4 and server_side.reply_src == search.ipv4
    # The oracle attributes the virtual address to the backend pod on both sides.
    totals = pair_totals(attribute({"node-a": [client_side], "node-b": [server_side]}, cluster))
    assert totals[("frontend-0", "search-0", "out", "tcp")] == client_side.original_bytes
    assert totals[("search-0", "frontend-0", "out", "tcp")] == server_side.reply_bytes
    assert totals[("search-0", "frontend-0", "in", "tcp")] == server_side.original_bytes


def test_public_hosts_are_reachable_only_through_the_fabric(cluster: MiniCluster, servers: None) -> None:
    frontend = cluster.pods["frontend-0"]
    results = run_exchanges([
        Exchange(frontend.netns, S3_OTHER_REGION, PORT, "tcp", 200, 50000),
        Exchange(frontend.netns, INTERNET_HOST, PORT, "udp", 100, 100),
    ])
    assert [r.error for r in results] == ["", ""]
    assert {r.client_address for r in results} == {frontend.ipv4}
    entries = read_conntrack(cluster.nodes["node-a"].netns)
    flows = attribute({"node-a": [_entry(entries, r.client_port) for r in results]}, cluster)
    assert {(f.local.pod, f.remote.address, f.remote.pod) for f in flows} == {
        ("frontend-0", S3_OTHER_REGION, ""), ("frontend-0", INTERNET_HOST, ""),
    }
    # Node B never sees traffic that does not cross it.
    assert not [e for e in read_conntrack(cluster.nodes["node-b"].netns)
                if e.sport in {r.client_port for r in results}]


def test_deleted_pod_ip_can_be_reused_by_a_new_pod_on_the_same_node(cluster: MiniCluster, servers: None) -> None:
    old = cluster.delete_pod("search-0")
    new = cluster.add_pod(PodSpec("search-1", "shop", "search", "node-b"), ipv4=old.ipv4, ipv6=old.ipv6)
    peer = PeerServer(new.netns, new.ipv4, PORT)
    try:
        (result,) = run_exchanges([Exchange(cluster.pods["frontend-0"].netns, new.ipv4, PORT, "tcp", 10, 10)])
    finally:
        peer.stop()
    assert result.error == ""
    assert cluster.pod_by_ip(old.ipv4) is new


def test_teardown_removes_every_namespace_even_after_a_failure() -> None:
    require_root()
    topology = Topology("aws", "us-west-2", "t", default_topology().nodes[:1],
                        (PodSpec("p", "default", "p", "node-a"),), (S3_OTHER_REGION,))
    created: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), MiniCluster(topology, PREFIX) as mc:
        created = [ns.name for ns in mc.registry.namespaces]
        raise RuntimeError("boom")
    assert len(created) == 4  # fabric, node, pod, public host
    assert not set(created) & set(list_namespaces())


@pytest.mark.parametrize("shipped", [True, False], ids=["shipped-configs", "generated-configs"])
def test_agent_and_gateway_configs_of_a_run_validate(cluster: MiniCluster, tmp_path: Path, shipped: bool) -> None:
    pipeline = MeteringPipeline(cluster, tmp_path, {"source": "static", "static": {"path": str(tmp_path / "i.yaml")}},
                                tmp_path / "ranges" / "aws-ip-ranges.json", PipelineSettings(shipped_configs=shipped))
    launches = [pipeline.gateway_launch()] + [pipeline.agent_launch(node) for node in cluster.nodes]
    for configs, env in launches:
        assert (len(configs) == 2) is shipped  # shipped config + overlay, or one generated file
        done = subprocess.run(
            [sys.executable, "-m", "kubenetmon", "validate", *[a for c in configs for a in ("--config", str(c))]],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stderr
