"""Exactness when clients reuse source ports (issue 13): the kernel replaces an entry in TIME_WAIT or
CLOSE by a new one for the same tuple, very often with the same ``CTA_ID``. The receiver's totals per
address pair must equal what the kernel counted, read by a separate process (``conntrack -E``)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from kubenetmon.netns import NamespaceRegistry
from tests.receivers.conntrack.conntrack_driver import read_delivered, spawn_driver
from tests.receivers.conntrack.conntrack_topology import (
    V4_CLIENT,
    V4_SERVER,
    V6_CLIENT,
    V6_SERVER,
    MakeReceiver,
    Pair,
    TcpConnection,
    make_pair,
    requires_root,
)
from tests.receivers.conntrack.port_reuse import (
    DestroyOracle,
    PairTotals,
    PortReusingTraffic,
    flush_and_settle,
    record_totals,
)

pytestmark = [pytest.mark.kernel, pytest.mark.slow, requires_root]

V4_CLIENT_2 = "10.231.0.3"
CLIENTS = [V4_CLIENT, V4_CLIENT_2, V6_CLIENT]


@pytest.fixture
def pair(registry: NamespaceRegistry) -> Pair:
    pair = make_pair(registry)
    pair.client.add_address("c0", f"{V4_CLIENT_2}/24")
    return pair


def _reuse_stats(oracle: DestroyOracle) -> tuple[int, int]:
    """(entries ended, distinct original tuples among them): many more entries than tuples = reuse."""
    tuples = Counter(
        " ".join(f for f in line.split() if f.startswith(("src=", "dst=", "sport=", "dport=")))
        for line in oracle.lines()
    )
    return sum(tuples.values()), len(tuples)


def _assert_exact(delivered: PairTotals, kernel: PairTotals) -> None:
    diff = {
        pair: (delivered.get(pair), kernel.get(pair))
        for pair in sorted(set(delivered) | set(kernel))
        if delivered.get(pair) != kernel.get(pair)
    }
    assert not diff, f"per pair (orig bytes, orig packets, reply bytes, reply packets): receiver vs kernel {diff}"


def _talk(conns: list[TcpConnection], i: int) -> None:
    for n, conn in enumerate(conns):
        conn.send_to_server(1_000 + 997 * ((i + n) % 13))
        conn.send_to_client(500 + 331 * ((i + n) % 7))


def test_reused_source_ports_store_exactly_the_kernels_totals(
    pair: Pair, make_receiver: MakeReceiver, tmp_path: Path
) -> None:
    receiver, sink = make_receiver(pair.server.name)  # switches on accounting, events and timestamps
    oracle = DestroyOracle(pair.server, tmp_path / "destroy.log")
    receiver.cycle()  # the baseline: an empty table
    stop = threading.Event()

    def cycles() -> None:
        while not stop.wait(0.25):
            receiver.cycle()

    cycler = threading.Thread(target=cycles)
    cycler.start()
    traffic = PortReusingTraffic(pair.client, pair.server, CLIENTS, [V4_SERVER, V6_SERVER])
    long_lived = [TcpConnection(pair.client, pair.server, V4_SERVER), TcpConnection(pair.client, pair.server,
                                                                                    V6_SERVER)]
    try:
        started = time.monotonic()
        for i in range(20):  # connections that live across many dumps, next to the short ones
            _talk(long_lived, i)
            time.sleep(0.3)
        traffic.stop()
        elapsed = time.monotonic() - started
        for conn in long_lived:
            conn.close()
    finally:
        traffic.stop()
        stop.set()
        cycler.join(30)
    flush_and_settle(pair.server, oracle)
    ended = len(oracle.lines())
    deadline = time.monotonic() + 20
    while receiver._m_events.value() < ended and time.monotonic() < deadline:
        time.sleep(0.1)
    receiver.cycle()
    output = oracle.stop()
    assert "ENOBUFS" not in output, output[-2000:]
    entries, tuples = _reuse_stats(oracle)
    assert traffic.connections / elapsed >= 100, f"only {traffic.connections} connections in {elapsed:.1f} s"
    assert entries >= 4 * tuples, f"{entries} entries on {tuples} tuples: the test did not reuse ports"
    _assert_exact(record_totals(sink.records), oracle.totals())
    # Nothing zeroes the counters here: a counter going down would be two connections mixed.
    assert receiver._m_resets.value() == 0


def test_reused_source_ports_stay_exact_across_agent_restarts(pair: Pair, tmp_path: Path) -> None:
    state, out = tmp_path / "ct.state", tmp_path / "delivered.jsonl"

    def spawn() -> subprocess.Popen[bytes]:
        return spawn_driver(pair.server.name, state, out)

    oracle = DestroyOracle(pair.server, tmp_path / "destroy.log")
    proc = spawn()
    time.sleep(0.5)  # the first dump sets the baseline of the empty table (no checkpoint yet)
    traffic = PortReusingTraffic(pair.client, pair.server, CLIENTS, [V4_SERVER, V6_SERVER])
    long_lived = [TcpConnection(pair.client, pair.server, V4_SERVER)]
    try:
        for round_, how in enumerate((signal.SIGKILL, signal.SIGTERM)):
            for i in range(8):
                _talk(long_lived, i)
                time.sleep(0.25)
            # Connections that end while no agent listens lose their last remainder (README:
            # Restarts); so the short ones pause around the restart, the long one keeps sending.
            traffic.pause()
            time.sleep(1.0)  # a few cycles: every event applied and checkpointed
            os.kill(proc.pid, how)
            assert proc.wait(30) == (0 if how == signal.SIGTERM else -signal.SIGKILL)
            _talk(long_lived, round_)  # while it is down
            proc = spawn()
            traffic.resume()  # the same source ports again: entries of the checkpoint get replaced
        for i in range(8):
            _talk(long_lived, i)
            time.sleep(0.25)
        traffic.stop()
        for conn in long_lived:
            conn.close()
        flush_and_settle(pair.server, oracle)
        time.sleep(1.5)  # the agent applies the flush's events
    finally:
        traffic.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    output = oracle.stop()
    assert "ENOBUFS" not in output, output[-2000:]
    entries, tuples = _reuse_stats(oracle)
    assert entries >= 4 * tuples, f"{entries} entries on {tuples} tuples: the test did not reuse ports"
    _assert_exact(record_totals(read_delivered(out)), oracle.totals())
