"""The conntrack receiver against the real kernel, in namespaces the tests create."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kubenetmon.flows import ConntrackRecord
from kubenetmon.netns import NamespaceRegistry, veth_pair
from kubenetmon.testing import SinkConsumer
from tests.receivers.conntrack.conntrack_topology import (
    HEADER_BOUND,
    V4_CLIENT,
    V4_SERVER,
    V6_CLIENT,
    V6_SERVER,
    MakeReceiver,
    Pair,
    TcpConnection,
    kernel_counters,
    make_pair,
    requires_root,
    udp_exchange,
)

pytestmark = [pytest.mark.kernel, requires_root]


def _records_for(sink: SinkConsumer, src: str, sport: int) -> list[ConntrackRecord]:
    return [r for r in sink.records if r.src == src and r.sport == sport]


def _totals(records: list[ConntrackRecord]) -> tuple[int, int, int, int]:
    return (
        sum(r.original_bytes for r in records), sum(r.original_packets for r in records),
        sum(r.reply_bytes for r in records), sum(r.reply_packets for r in records),
    )


@pytest.fixture
def pair(registry: NamespaceRegistry) -> Pair:
    return make_pair(registry)


@pytest.mark.parametrize(("client", "server"), [(V4_CLIENT, V4_SERVER), (V6_CLIENT, V6_SERVER)])
def test_tcp_payload_is_reported_in_both_directions(
    pair: Pair, make_receiver: MakeReceiver, client: str, server: str
) -> None:
    receiver, sink = make_receiver(pair.server.name)
    receiver.cycle()  # baseline: empty table
    conn = TcpConnection(pair.client, pair.server, server)
    conn.send_to_server(300_000)
    conn.send_to_client(50_000)
    receiver.cycle()
    [record] = _records_for(sink, client, conn.client_port)
    assert record.transport == "tcp"
    assert record.network_type == ("ipv6" if ":" in client else "ipv4")
    assert (record.dst, record.dport) == (server, conn.server_port)
    assert (record.reply_src, record.reply_sport, record.reply_dst, record.reply_dport) == (
        server, conn.server_port, client, conn.client_port,
    )
    assert record.is_mirrored()
    assert 300_000 <= record.original_bytes <= 300_000 + record.original_packets * HEADER_BOUND
    assert 50_000 <= record.reply_bytes <= 50_000 + record.reply_packets * HEADER_BOUND
    assert record.node == "node-a"
    assert 0 < record.start_ns < record.end_ns
    conn.close()


@pytest.mark.parametrize(("client", "server"), [(V4_CLIENT, V4_SERVER), (V6_CLIENT, V6_SERVER)])
def test_udp_exchange_is_reported(pair: Pair, make_receiver: MakeReceiver, client: str, server: str) -> None:
    receiver, sink = make_receiver(pair.server.name)
    receiver.cycle()
    port = udp_exchange(pair.client, pair.server, server, request=1000, reply=3000)
    receiver.cycle()
    [record] = _records_for(sink, client, port)
    assert record.transport == "udp"
    header = 28 if ":" not in client else 48  # IP + UDP headers
    assert (record.original_packets, record.original_bytes) == (1, 1000 + header)
    assert (record.reply_packets, record.reply_bytes) == (1, 3000 + header)


def test_idle_entries_are_not_sent_and_are_counted(pair: Pair, make_receiver: MakeReceiver) -> None:
    receiver, sink = make_receiver(pair.server.name)
    conn = TcpConnection(pair.client, pair.server, V4_SERVER)
    conn.send_to_server(1000)
    receiver.cycle()
    receiver.cycle()
    assert _records_for(sink, V4_CLIENT, conn.client_port) == []
    assert receiver._m_ignored.value(reason="idle") >= 1
    conn.close()


def test_connection_opened_and_closed_between_dumps_is_fully_counted(
    pair: Pair, make_receiver: MakeReceiver
) -> None:
    receiver, sink = make_receiver(pair.server.name)
    receiver.cycle()
    conn = TcpConnection(pair.client, pair.server, V4_SERVER)
    conn.send_to_server(123_456)
    conn.send_to_client(7_890)
    expected = kernel_counters(pair, conn.client_port)  # the entry's counters before it ends
    conn.close()
    # Closing adds FIN/ACK packets; the kernel's final counters come with the DESTROY event.
    # Force the end now instead of waiting for TIME_WAIT to expire.
    pair.server.run(["conntrack", "-D", "-p", "tcp", "--orig-port-src", str(conn.client_port)])
    receiver.cycle()
    records = _records_for(sink, V4_CLIENT, conn.client_port)
    assert records, "the DESTROY event did not produce a record"
    ob, _, rb, _ = _totals(records)
    assert ob >= expected[0] and rb >= expected[2]
    assert ob - expected[0] <= 3 * HEADER_BOUND and rb - expected[2] <= 3 * HEADER_BOUND
    assert receiver._m_events.value() >= 1


def test_long_connection_sums_to_the_kernels_final_counters(pair: Pair, make_receiver: MakeReceiver) -> None:
    receiver, sink = make_receiver(pair.server.name)
    receiver.cycle()
    conn = TcpConnection(pair.client, pair.server, V4_SERVER)
    for i in range(6):
        conn.send_to_server(10_000 * (i + 1))
        if i % 2:
            conn.send_to_client(3_000)
        receiver.cycle()
    receiver.cycle()  # an idle interval in between
    conn.send_to_server(5_000)
    final = kernel_counters(pair, conn.client_port)
    receiver.cycle()
    records = _records_for(sink, V4_CLIENT, conn.client_port)
    assert len(records) == 7  # one per active interval, none for the idle one
    assert _totals(records) == final
    starts = sorted(r.start_ns for r in records)
    ends = sorted(r.end_ns for r in records)
    assert all(s < e for s, e in zip(starts, ends, strict=True))
    conn.close()


def test_dnat_flow_carries_the_reply_tuple_of_the_backend(
    registry: NamespaceRegistry, make_receiver: MakeReceiver
) -> None:
    client, router, backend = registry.create("cli"), registry.create("rtr"), registry.create("be")
    veth_pair(client, "c0", router, "rc")
    veth_pair(router, "rb", backend, "b0")
    client.add_address("c0", "10.232.1.1/24")
    router.add_address("rc", "10.232.1.254/24")
    router.add_address("rb", "10.232.2.254/24")
    backend.add_address("b0", "10.232.2.1/24")
    client.add_route("default", via="10.232.1.254")
    backend.add_route("default", via="10.232.2.254")
    router.enable_forwarding()
    router.add_address("lo", "10.96.0.10/32")  # the "ClusterIP"
    router.track_connections()
    router.nft(
        "table ip knm_nat {\n"
        "  chain prerouting { type nat hook prerouting priority -100; ip daddr 10.96.0.10 tcp dport 80"
        " dnat to 10.232.2.1:8080; }\n"
        "}\n"
    )
    client.add_route("10.96.0.10/32", via="10.232.1.254")
    receiver, sink = make_receiver(router.name)
    receiver.cycle()
    conn = TcpConnection(client, backend, "10.232.2.1", port=8080)  # listener on the backend
    conn.close()
    # A second connection through the virtual address:
    with backend.entered():
        import socket

        listener = socket.socket()
    listener.bind(("10.232.2.1", 8080))
    listener.listen(1)
    with client.entered():
        c = socket.create_connection(("10.96.0.10", 80), timeout=5)
    s, _ = listener.accept()
    c.sendall(b"z" * 5000)
    got = b""
    while len(got) < 5000:
        got += s.recv(5000)
    receiver.cycle()
    [record] = [r for r in sink.records if r.dst == "10.96.0.10"]
    assert (record.src, record.dport) == ("10.232.1.1", 80)
    assert (record.reply_src, record.reply_sport) == ("10.232.2.1", 8080)
    assert (record.reply_dst, record.reply_dport) == ("10.232.1.1", record.sport)
    assert not record.is_mirrored()
    assert record.original_bytes >= 5000
    for sock in (c, s, listener):
        sock.close()


def test_loopback_and_excluded_cidrs_are_ignored_by_reason(
    registry: NamespaceRegistry, make_receiver: MakeReceiver
) -> None:
    pair = make_pair(registry)
    pair.server.set_sysctls({"net.ipv4.conf.all.route_localnet": 0})
    receiver, sink = make_receiver(pair.server.name, exclude_cidrs=["fd00:231::/64"])
    receiver.cycle()
    udp_exchange(pair.server, pair.server, "127.0.0.1", 10, 10)  # loopback inside the namespace
    udp_exchange(pair.client, pair.server, V6_SERVER, 10, 10)  # excluded
    port = udp_exchange(pair.client, pair.server, V4_SERVER, 10, 10)  # kept
    receiver.cycle()
    assert [(r.src, r.sport) for r in sink.records] == [(V4_CLIENT, port)]
    assert receiver._m_ignored.value(reason="loopback") == 1
    assert receiver._m_ignored.value(reason="cidr") == 1


def test_non_tcp_udp_entries_are_ignored_as_protocol(pair: Pair, make_receiver: MakeReceiver) -> None:
    receiver, sink = make_receiver(pair.server.name)
    receiver.cycle()
    pair.client.run([sys.executable, "-c", (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253);"
        f"s.sendto(b'x' * 20, ('{V4_SERVER}', 0))"
    )])
    receiver.cycle()
    assert sink.records == []
    assert receiver._m_ignored.value(reason="protocol") >= 1


def test_kernel_settings_are_configured_or_explained(registry: NamespaceRegistry, make_receiver: MakeReceiver) -> None:
    ns = registry.create("sys")
    assert ns.get_sysctl("net.netfilter.nf_conntrack_acct") == "0"
    receiver, _ = make_receiver(ns.name, configure_sysctls=False, open_=False)
    with pytest.raises(RuntimeError, match=rf"ip netns exec {ns.name} sysctl -w net.netfilter.nf_conntrack_acct=1"):
        receiver.open()
    make_receiver(ns.name)  # configure_sysctls: true (default)
    assert ns.get_sysctl("net.netfilter.nf_conntrack_acct") == "1"
    assert ns.get_sysctl("net.netfilter.nf_conntrack_events") == "1"


def test_sanity_check_passes_with_counters_and_fails_without(pair: Pair, make_receiver: MakeReceiver) -> None:
    receiver, _ = make_receiver(pair.server.name, skip_sanity_check=False, uptime_wait=0)
    assert receiver.sanity_check() is False
    assert "empty counters" in (receiver.health() or "")
    udp_exchange(pair.client, pair.server, V4_SERVER, 10, 10)
    receiver2, _ = make_receiver(pair.server.name, skip_sanity_check=False, uptime_wait=0)
    assert receiver2.sanity_check() is True
    assert receiver2.health() is None


def test_conntrack_cli_sees_the_same_entries(pair: Pair) -> None:
    # Guards the test topology itself: the server namespace tracks with counters.
    udp_exchange(pair.client, pair.server, V4_SERVER, 10, 10)
    out = subprocess.run(
        ["ip", "netns", "exec", pair.server.name, "conntrack", "-L", "-p", "udp"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "bytes=" in out


def test_a_burst_of_destroy_events_loses_none(pair: Pair, make_receiver: MakeReceiver) -> None:
    import socket

    receiver, sink = make_receiver(pair.server.name)
    receiver.cycle()
    flows = 5000
    with pair.client.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((V4_CLIENT, 0))
        for port in range(20_000, 20_000 + flows):
            sock.sendto(b"b" * 10, (V4_SERVER, port))
        client_port = sock.getsockname()[1]
    # Every entry ends before the next dump: only the DESTROY events can count them.
    pair.server.run(["conntrack", "-D", "-p", "udp", "--orig-port-src", str(client_port)], check=False)
    # Events still in flight at a cycle are applied at the next one; wait so that one cycle holds all.
    assert sink.wait_for(lambda _: receiver._m_events.value() >= flows, 20)
    receiver.cycle()
    mine = [r for r in sink.records if r.sport == client_port]
    assert len(mine) == flows
    assert {(r.original_packets, r.original_bytes) for r in mine} == {(1, 38)}
    assert receiver._m_overflows.value() == 0


def test_sanity_check_never_resets_counters_even_with_zero_on_dump(pair: Pair, make_receiver: MakeReceiver) -> None:
    conn = TcpConnection(pair.client, pair.server, V4_SERVER)
    conn.send_to_server(1_000)
    before = kernel_counters(pair, conn.client_port)
    receiver, _ = make_receiver(pair.server.name, accounting="zero_on_dump", skip_sanity_check=False)
    assert receiver.sanity_check() is True
    assert kernel_counters(pair, conn.client_port) == before
    conn.close()


def test_timestamps_are_switched_on_or_explained(registry: NamespaceRegistry, make_receiver: MakeReceiver) -> None:
    ns = registry.create("ts")
    ns.set_sysctls({"net.netfilter.nf_conntrack_acct": 1, "net.netfilter.nf_conntrack_events": 1})
    assert ns.get_sysctl("net.netfilter.nf_conntrack_timestamp") == "0"  # what a new namespace starts with
    receiver, _ = make_receiver(ns.name, configure_sysctls=False, open_=False)
    with pytest.raises(RuntimeError, match=r"nf_conntrack_timestamp=0\).*sysctl -w .*nf_conntrack_timestamp=1"):
        receiver.open()
    make_receiver(ns.name)
    assert ns.get_sysctl("net.netfilter.nf_conntrack_timestamp") == "1"


def test_dumped_entries_are_keyed_by_their_start_time(pair: Pair, make_receiver: MakeReceiver) -> None:
    receiver, _ = make_receiver(pair.server.name)
    receiver.cycle()
    udp_exchange(pair.client, pair.server, V4_SERVER, 10, 10)
    receiver.cycle()
    [layout] = [lay for lays in receiver._tracker.layouts.by_length.values() for lay in lays if not lay.ignore]
    assert layout.t1 - layout.t0 == 8  # CTA_TIMESTAMP_START's value is part of the key
