"""The whole pipeline on known traffic: every byte the kernels counted, attributed right.

One mini-cluster (2 nodes in 2 zones, 5 pods, a ClusterIP, public hosts),
the loopback Kubernetes API server, one real agent process per node and a
real gateway writing into chDB. The traffic is fixed; the oracle is each
node's own conntrack table read with ``conntrack -L`` after the run, and the
payload the clients put on the wire.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubenetmon.demo.conntrack_table import ConntrackEntry
from kubenetmon.demo.expected import ExpectedFlow, attribute
from kubenetmon.demo.minicluster import MiniCluster
from kubenetmon.demo.traffic import Exchange, ExchangeResult, run_exchanges
from kubenetmon.processors.cloud_prefix.sources import normalise
from tests.e2e.harness import (
    AWS_SAME_REGION,
    INTERNET_HOST,
    PORT,
    S3_OTHER_REGION,
    Row,
    expected_pairs,
    ground_truth,
    metered_cluster,
    table_pairs,
    table_rows,
)

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(240)]


@dataclass
class Outcome:
    cluster: MiniCluster
    results: list[ExchangeResult]
    truth: dict[str, list[ConntrackEntry]]
    expected: list[ExpectedFlow]
    rows: list[Row]
    logs: str


def _plan(cluster: MiniCluster, cluster_ip: str) -> list[Exchange]:
    pods = cluster.pods
    fe, co, _cat, pay = (pods[n].netns for n in ("frontend-0", "checkout-0", "catalog-0", "payments-0"))
    cat6, pay6 = pods["catalog-0"].ipv6, pods["payments-0"].ipv6
    assert cat6 and pay6
    return [
        # Across zones, short TCP connections, v4 and v6.
        *[Exchange(fe, pods["catalog-0"].ipv4, PORT, "tcp", 2000, 30000) for _ in range(4)],
        *[Exchange(fe, cat6, PORT, "tcp", 1500, 700, rounds=2) for _ in range(2)],
        # Across zones, UDP, v4 and v6.
        Exchange(co, pods["payments-0"].ipv4, PORT, "udp", 400, 1000, rounds=20),
        Exchange(co, pay6, PORT, "udp", 300, 300, rounds=10),
        # A long-lived connection spanning several agent intervals.
        Exchange(co, pods["catalog-0"].ipv4, PORT, "tcp", 5000, 5000, rounds=8, pause=0.5),
        # Through a ClusterIP (DNAT in the client's node).
        *[Exchange(fe, cluster_ip, 80, "tcp", 100, 20000) for _ in range(3)],
        # The same node, the same zone.
        Exchange(fe, pods["checkout-0"].ipv4, PORT, "tcp", 700, 900),
        # Outside the cluster: S3 of another region, our own region's AWS, the Internet.
        Exchange(fe, S3_OTHER_REGION, PORT, "tcp", 50000, 100),
        Exchange(co, AWS_SAME_REGION, PORT, "udp", 200, 200, rounds=5),
        Exchange(pay, INTERNET_HOST, PORT, "tcp", 1000, 1000),
    ]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    work = Path(tmp_path_factory.mktemp("metering"))
    with metered_cluster(work) as m:
        service = m.cluster.add_cluster_ip("search", m.cluster.pods["search-0"], port=80, target_port=PORT)
        m.pipeline.start()
        m.wait_until_metering()
        results = run_exchanges(_plan(m.cluster, service.cluster_ip))
        assert [r.error for r in results if r.error] == []
        m.settle()
        m.pipeline.stop()
        truth = ground_truth(m.cluster)
        rows = table_rows(m.pipeline)
        yield Outcome(m.cluster, results, truth, attribute(truth, m.cluster), rows, m.pipeline.logs())


def test_every_pair_gets_exactly_the_bytes_both_kernels_counted(outcome: Outcome) -> None:
    expected = expected_pairs(outcome.expected)
    assert len(expected) >= 20, "the traffic plan should yield many distinct pairs"
    got = table_pairs(outcome.rows)
    assert got == expected, outcome.logs


def test_packets_match_the_kernels_too(outcome: Outcome) -> None:
    expected: dict[tuple[str, str], int] = defaultdict(int)
    for f in outcome.expected:
        expected[(f.local.pod or f.local.address, f.direction)] += f.packets
    got: dict[tuple[str, str], int] = defaultdict(int)
    for r in outcome.rows:
        if r.network_type == "ipv4" or r["localPod"]:
            got[(r.local, str(r["direction"]))] += r.packets
    assert dict(got) == dict(expected)


def _client_row(outcome: Outcome, client: str, server: str, transport: str, network_type: str) -> Row:
    (row,) = [r for r in outcome.rows if (r.local, r.remote, r["direction"], r["proto"], r.network_type)
              == (client, server, "out", transport, network_type)]
    return row


def test_bytes_lie_within_payload_and_header_bounds(outcome: Outcome) -> None:
    payload: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in outcome.results:
        client = outcome.cluster.pod_by_ip(r.client_address)
        assert client is not None
        server_pod = outcome.cluster.pod_by_ip(r.exchange.server_address)
        if server_pod is None and r.exchange.server_port == 80:
            server_pod = outcome.cluster.pods["search-0"]  # the ClusterIP's backend
        server = server_pod.name if server_pod else r.exchange.server_address
        family = "ipv6" if ":" in r.client_address else "ipv4"
        key = (client.name, server, r.exchange.transport, family)
        payload[key][0] += r.sent_payload
        payload[key][1] += r.received_payload
    assert len(payload) == 10
    for (client, server, transport, family), (sent, received) in payload.items():
        out = _client_row(outcome, client, server, transport, family)
        (back,) = [r for r in outcome.rows if (r.local, r.remote, r["direction"], r["proto"], r.network_type)
                   == (client, server, "in", transport, family)]
        ip_header = 20 if family == "ipv4" else 40
        if transport == "udp":  # one datagram per packet: exact
            assert out.bytes == sent + (ip_header + 8) * out.packets, (client, server)
            assert back.bytes == received + (ip_header + 8) * back.packets, (client, server)
        else:  # TCP headers are 20 to 60 bytes (options)
            for row, data in ((out, sent), (back, received)):
                assert data + (ip_header + 20) * row.packets <= row.bytes <= data + (ip_header + 60) * row.packets


def test_endpoints_carry_their_pods_namespaces_apps_nodes_and_zones(outcome: Outcome) -> None:
    cluster = outcome.cluster
    assert outcome.rows
    for row in outcome.rows:
        assert (row["localCloud"], row["localRegion"], row["localCluster"]) == ("aws", "us-west-2", "minicluster")
        for side in ("local", "remote"):
            name = row[f"{side}Pod"]
            if not name:
                continue
            pod = cluster.pods[name]
            node = cluster.nodes[pod.node]
            assert (row[f"{side}Namespace"], row[f"{side}App"], row[f"{side}Node"],
                    row[f"{side}AvailabilityZone"]) == (pod.namespace, pod.app, node.name, node.zone), row
        assert row["localPod"], f"every flow here starts or ends at a pod: {row}"


def test_connection_classes_and_cloud_services(outcome: Outcome) -> None:
    by_remote: dict[str, set[tuple[str, str, str, str]]] = defaultdict(set)
    for row in outcome.rows:
        remote = "pod" if row["remotePod"] else row["toString(remoteIPv4)"]
        by_remote[remote].add((row["connectionClass"], row["remoteCloud"], row["remoteRegion"],
                               row["remoteCloudService"]))
    assert by_remote == {
        "pod": {("INTRA_VPC", "aws", "us-west-2", "")},
        S3_OTHER_REGION: {("INTER_REGION", "aws", "eu-west-1", normalise("S3"))},
        AWS_SAME_REGION: {("INTRA_REGION", "aws", "us-west-2", normalise("AMAZON"))},
        INTERNET_HOST: {("PUBLIC_INTERNET", "", "", "")},
    }


def test_cross_zone_bytes_per_workload_pair_are_what_the_traffic_generated(outcome: Outcome) -> None:
    def cross_zone(pairs: list[tuple[str, str, str, str, str, int]]) -> dict[tuple[str, str], int]:
        totals: dict[tuple[str, str], int] = defaultdict(int)
        for direction, local_app, remote_app, local_zone, remote_zone, n in pairs:
            if direction == "out" and local_zone and remote_zone and local_zone != remote_zone:
                totals[(local_app, remote_app)] += n
        return dict(totals)

    got = cross_zone([(str(r["direction"]), r["localApp"], r["remoteApp"], r["localAvailabilityZone"],
                       r["remoteAvailabilityZone"], r.bytes) for r in outcome.rows])
    expected = cross_zone([(f.direction, f.local.app, f.remote.app, f.local.zone, f.remote.zone, f.bytes)
                           for f in outcome.expected])
    assert set(got) == {("frontend", "catalog"), ("catalog", "frontend"), ("checkout", "payments"),
                        ("payments", "checkout"), ("checkout", "catalog"), ("catalog", "checkout"),
                        ("frontend", "search"), ("search", "frontend")}
    assert got == expected
    # Both ends of a cross-zone pair count the same bytes: what one sent, the other received.
    assert got[("frontend", "catalog")] == sum(
        r.bytes for r in outcome.rows
        if (r["localApp"], r["remoteApp"], r["direction"]) == ("catalog", "frontend", "in"))


def test_cluster_ip_traffic_is_attributed_to_the_backend_pod_on_both_nodes(outcome: Outcome) -> None:
    client_side = [r for r in outcome.rows if r["localPod"] == "frontend-0" and r["remotePod"] == "search-0"]
    server_side = [r for r in outcome.rows if r["localPod"] == "search-0" and r["remotePod"] == "frontend-0"]
    assert {r["localNode"] for r in client_side} == {"node-a"}
    assert {r["localNode"] for r in server_side} == {"node-b"}
    out = sum(r.bytes for r in client_side if r["direction"] == "out")
    received = sum(r.bytes for r in server_side if r["direction"] == "in")
    assert out == received > 300
