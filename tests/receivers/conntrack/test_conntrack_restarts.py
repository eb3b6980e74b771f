"""Exactness across restarts (graceful and kill -9), backpressure and zero_on_dump."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubenetmon.flows import ConntrackRecord, FlowBatch
from kubenetmon.netns import NamespaceRegistry
from kubenetmon.testing import SinkConsumer
from tests.receivers.conntrack.conntrack_driver import read_delivered, spawn_driver
from tests.receivers.conntrack.conntrack_topology import (
    HEADER_BOUND,
    V4_CLIENT,
    V4_SERVER,
    MakeReceiver,
    Pair,
    TcpConnection,
    kernel_counters,
    make_pair,
    requires_root,
)

pytestmark = [pytest.mark.kernel, requires_root]

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def pair(registry: NamespaceRegistry) -> Pair:
    return make_pair(registry)


def _totals(records: list[ConntrackRecord], sport: int) -> tuple[int, int, int, int]:
    mine = [r for r in records if r.src == V4_CLIENT and r.sport == sport]
    return (
        sum(r.original_bytes for r in mine), sum(r.original_packets for r in mine),
        sum(r.reply_bytes for r in mine), sum(r.reply_packets for r in mine),
    )


def _dedup(batches: list[FlowBatch]) -> list[ConntrackRecord]:
    seen: set[str] = set()
    out: list[ConntrackRecord] = []
    for b in batches:
        if b.batch_id in seen:
            continue
        seen.add(b.batch_id)
        out.extend(b.records)
    return out


def test_first_dump_without_checkpoint_only_sets_the_baseline(
    pair: Pair, make_receiver: MakeReceiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conn = TcpConnection(pair.client, pair.server, V4_SERVER)
    conn.send_to_server(10_000)  # before the agent: must not be reported
    receiver, sink = make_receiver(pair.server.name, checkpoint_path=str(tmp_path / "ct.state"))
    with caplog.at_level(logging.INFO):
        receiver.cycle()
    assert sink.records == []
    assert "sets the baseline" in caplog.text
    conn.send_to_server(2_000)
    receiver.cycle()
    ob = _totals(sink.records, conn.client_port)[0]
    assert 2_000 <= ob <= 2_000 + 5 * HEADER_BOUND
    conn.close()


def test_graceful_restart_with_checkpoint_is_exact(pair: Pair, make_receiver: MakeReceiver, tmp_path: Path) -> None:
    state = str(tmp_path / "ct.state")
    first, sink1 = make_receiver(pair.server.name, checkpoint_path=state)
    first.cycle()
    conn = TcpConnection(pair.client, pair.server, V4_SERVER)
    conn.send_to_server(40_000)
    first.cycle()
    conn.send_to_server(30_000)
    first.shutdown()  # last cycle: delivers the 30 kB and checkpoints
    conn.send_to_client(20_000)  # while no agent runs
    second, sink2 = make_receiver(pair.server.name, checkpoint_path=state)
    second.cycle()
    conn.send_to_server(1_000)
    final = kernel_counters(pair, conn.client_port)
    second.cycle()
    assert _totals(sink1.records + sink2.records, conn.client_port) == final
    conn.close()


def test_undelivered_batch_is_redelivered_with_the_same_id(
    pair: Pair, make_receiver: MakeReceiver, tmp_path: Path
) -> None:
    state = str(tmp_path / "ct.state")

    class CrashAfterTaking(SinkConsumer):
        """Takes the batch, then the process "dies" before the receiver can mark it delivered."""

        def consume(self, batch: FlowBatch) -> None:
            super().consume(batch)
            raise KeyboardInterrupt

    crashing = CrashAfterTaking()
    first, _ = make_receiver(pair.server.name, checkpoint_path=state, consumer=crashing)
    first.cycle()
    conn = TcpConnection(pair.client, pair.server, V4_SERVER)
    conn.send_to_server(25_000)
    with pytest.raises(KeyboardInterrupt):
        first.cycle()
    first._shutdown_done = True  # it "died": no graceful last cycle
    second, sink = make_receiver(pair.server.name, checkpoint_path=state)
    conn.send_to_server(5_000)
    final = kernel_counters(pair, conn.client_port)
    second.cycle()
    [crashed] = crashing.batches
    assert crashed.batch_id in {b.batch_id for b in sink.batches}, "the undelivered batch was not re-sent"
    assert _totals(_dedup(crashing.batches + sink.batches), conn.client_port) == final
    conn.close()


def test_backpressure_for_several_intervals_loses_nothing(pair: Pair, make_receiver: MakeReceiver) -> None:
    receiver, sink = make_receiver(pair.server.name)
    receiver.cycle()
    conn = TcpConnection(pair.client, pair.server, V4_SERVER)
    sink.refuse = True
    for _ in range(4):
        conn.send_to_server(11_000)
        conn.send_to_client(3_000)
        receiver.cycle()
    assert sink.batches == []
    assert receiver._m_backpressure.value() == 4
    sink.refuse = False
    conn.send_to_server(1_000)
    final = kernel_counters(pair, conn.client_port)
    receiver.cycle()
    [record] = [r for r in sink.records if r.sport == conn.client_port]  # merged into one
    assert (record.original_bytes, record.original_packets, record.reply_bytes, record.reply_packets) == final
    assert record.start_ns < record.end_ns
    conn.close()


def test_consumer_errors_keep_the_records_too(pair: Pair, make_receiver: MakeReceiver) -> None:
    class Flaky(SinkConsumer):
        failures = 2

        def consume(self, batch: FlowBatch) -> None:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("exporter bug")
            super().consume(batch)

    receiver, sink = make_receiver(pair.server.name, consumer=Flaky())
    receiver.cycle()
    conn = TcpConnection(pair.client, pair.server, V4_SERVER)
    for _ in range(3):
        conn.send_to_server(5_000)
        receiver.cycle()
    final = kernel_counters(pair, conn.client_port)
    receiver.cycle()  # delivers the last ACKs too
    assert _totals(sink.records, conn.client_port) == final
    assert receiver._m_errors.value(kind="consume") == 2
    conn.close()


def test_zero_on_dump_reports_deltas_and_zeroes_the_kernel_counters(
    pair: Pair, make_receiver: MakeReceiver
) -> None:
    receiver, sink = make_receiver(pair.server.name, accounting="zero_on_dump")
    conn = TcpConnection(pair.client, pair.server, V4_SERVER)
    conn.send_to_server(30_000)
    receiver.cycle()
    conn.send_to_server(20_000)
    receiver.cycle()
    records = [r for r in sink.records if r.sport == conn.client_port]
    ob = sum(r.original_bytes for r in records)
    packets = sum(r.original_packets for r in records)
    assert 50_000 <= ob <= 50_000 + packets * HEADER_BOUND
    assert kernel_counters(pair, conn.client_port)[0] == 0  # the original's method resets them
    conn.close()


@pytest.mark.slow
def test_kill_9_and_graceful_restarts_of_a_real_agent_process_stay_exact(pair: Pair, tmp_path: Path) -> None:
    state, out = tmp_path / "ct.state", tmp_path / "delivered.jsonl"

    def spawn() -> subprocess.Popen[bytes]:
        return spawn_driver(pair.server.name, state, out)

    rng = random.Random(7)
    conn = TcpConnection(pair.client, pair.server, V4_SERVER)
    before = kernel_counters(pair, conn.client_port)  # the handshake: before the baseline
    proc = spawn()
    try:
        time.sleep(0.5)  # the first dump sets the baseline (no checkpoint yet)
        conn.send_to_server(1_000)
        for round_ in range(6):
            deadline = time.monotonic() + rng.uniform(0.3, 1.2)
            while time.monotonic() < deadline:  # traffic while the agent runs, cycles and checkpoints
                conn.send_to_server(rng.randrange(1, 40_000))
                conn.send_to_client(rng.randrange(1, 10_000))
            if round_ == 3:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0
            else:
                os.kill(proc.pid, signal.SIGKILL)  # mid-transfer, at a random point of a cycle
                proc.wait(10)
            conn.send_to_server(rng.randrange(1, 40_000))  # while it is down
            proc = spawn()
        conn.send_to_server(3_000)
        final = kernel_counters(pair, conn.client_port)
        time.sleep(1.0)  # a few cycles
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    expected = tuple(f - b for f, b in zip(final, before, strict=True))
    assert _totals(read_delivered(out), conn.client_port) == expected
    conn.close()


@pytest.mark.slow
def test_kubenetmon_run_meters_a_namespace_and_stops_on_sigterm(pair: Pair, tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "receivers:\n"
        f"  conntrack: {{interval: 0.2, netns: {pair.server.name}, node_name: node-a, skip_sanity_check: true,\n"
        f"              checkpoint_path: {tmp_path / 'ct.state'}}}\n"
        "exporters:\n"
        "  debug: {verbosity: normal}\n"
        "service:\n"
        "  pipelines: {flows: {receivers: [conntrack], exporters: [debug]}}\n"
        "  telemetry: {metrics: {address: '127.0.0.1:0'}}\n"
    )
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubenetmon", "run", "--config", str(config)], cwd=REPO, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 20
        while "first dump" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        conn = TcpConnection(pair.client, pair.server, V4_SERVER)
        conn.send_to_server(4_321)
        while f"{V4_CLIENT}:{conn.client_port}" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    text = log.read_text()
    assert f"record tcp {V4_CLIENT}:{conn.client_port} -> {V4_SERVER}:{conn.server_port}" in text, text
    assert code == 0, text
