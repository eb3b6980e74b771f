"""The dedup window survives kill -9 of the gateway (issue 16 item 6), with a real child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from kubenetmon.otlp import encode_records_bytes
from kubenetmon.receivers.otlp import BatchIdWindow
from tests.otlp.otlp_testkit import make_records

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
ROOT = Path(__file__).resolve().parents[3]


class Gateway:
    def __init__(self, journal: Path, sink: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.receivers.otlp.otlp_dedup_child", str(journal), str(sink)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("port "), line
        self.port = int(line.split()[1])

    def export(self, data: bytes, batch_id: str) -> ExportMetricsServiceResponse:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            call = channel.unary_unary(EXPORT, response_deserializer=ExportMetricsServiceResponse.FromString)
            return call(data, timeout=10, metadata=[("kubenetmon-batch-id", batch_id)])  # type: ignore[no-any-return]

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for g in started:
        if g.proc.poll() is None:
            g.kill9()


def test_a_batch_acked_then_resent_after_kill_9_is_stored_once(tmp_path: Path, gateways: list[Gateway]) -> None:
    journal, sink = tmp_path / "queue" / "otlp-dedup.jsonl", tmp_path / "sink.txt"
    data = encode_records_bytes(make_records(10), {})[0]
    first = Gateway(journal, sink)
    gateways.append(first)
    first.export(data, "block-1")  # acknowledged ...
    first.kill9()  # ... then the gateway dies before the agent saw the answer (or after: same thing)
    second = Gateway(journal, sink)
    gateways.append(second)
    second.export(data, "block-1")  # the agent re-sends with the same id
    second.export(data, "block-2")  # a new id is consumed as usual
    assert sink.read_text().split() == ["10", "10"]


def test_the_journal_drops_expired_ids_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "dedup.jsonl"
    w = BatchIdWindow(10, ttl=60, journal=path)
    assert w.begin(["a"], "x") == "new"
    w.end(["a"], "x", delivered=True)
    w.close()
    with open(path, "a") as f:
        f.write('[1.0, "a", "ancient"]\n[17000')  # expired long ago, and a write cut by kill -9
    again = BatchIdWindow(10, ttl=60, journal=path)
    assert again.begin(["a"], "x") == "duplicate"
    assert again.begin(["a"], "ancient") == "new"
    assert len(path.read_text().splitlines()) == 1  # rewritten with the live ids only
