"""OTLP fuzz against a REAL gateway process, with a differential oracle (issue 16).

``kubenetmon run`` (otlp receiver → debug exporter) runs as a child process.
Every request — hypothesis-built records with structured mutations, or byte
mutations of a canonical request — is first judged by the oracle (protobuf
+ the field-by-field reference decoder with the gateway's default limits):
refused as INVALID_ARGUMENT, or these points accepted and these rejected by
these reasons. The gateway's answer must say exactly that; at the end the
points the exporter received must be exactly the accepted ones, each once
(every request carries a batch id and some are re-sent), with no traceback
in the log, the process alive and its RSS bounded.

Bounded for CI (a few seconds of requests); ``KUBENETMON_FUZZ_EXAMPLES=N``
runs N examples per strategy.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from kubenetmon.otlp import DecodeLimits, decode_records_slow, encode_records_bytes
from tests.fuzz.fuzzkit import fuzz_settings
from tests.fuzz.test_fuzz_otlp_decoder import mutate, records
from tests.otlp.otlp_testkit import SECOND, free_port, make_records

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
EXAMPLES = 60  # per test; KUBENETMON_FUZZ_EXAMPLES overrides (tests/fuzz/fuzzkit.py)
FUZZ = fuzz_settings(EXAMPLES, HealthCheck.function_scoped_fixture)
# The receiver's defaults (kubenetmon/receivers/otlp/config.py: limits).
LIMITS = DecodeLimits(max_age_ns=86400 * SECOND, max_future_ns=300 * SECOND)
MAX_RSS = 600 << 20
ROOT = Path(__file__).resolve().parents[2]
# Strategies must not change between examples, so times are drawn around the
# clock at import; a run lasts far less than the margins of times_around.
NOW = time.time_ns()


@dataclass
class Gateway:
    proc: subprocess.Popen[str]
    port: int
    metrics_port: int
    log: list[str] = field(default_factory=list)
    channel: grpc.Channel | None = None
    expected_points: int = 0
    expected_bytes: int = 0
    requests: int = 0

    def export(self, data: bytes, batch_id: str) -> ExportMetricsServiceResponse:
        assert self.channel is not None
        call = self.channel.unary_unary(EXPORT, response_deserializer=ExportMetricsServiceResponse.FromString)
        self.requests += 1
        return call(data, timeout=10, metadata=[("kubenetmon-batch-id", batch_id)])  # type: ignore[no-any-return]

    def stored_bytes(self) -> int:
        return sum(int(m.group(1)) for line in list(self.log)
                   if (m := re.search(r"batch: \d+ conntrack records, 0 flows, (\d+) bytes", line)))

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port, metrics_port = free_port(), free_port()
    cfg = tmp_path_factory.mktemp("gw") / "gateway.yaml"
    cfg.write_text(
        f"receivers: {{otlp: {{grpc: {{endpoint: '127.0.0.1:{port}'}}}}}}\n"
        "exporters: {debug: {verbosity: basic}}\n"
        "service:\n  pipelines: {records: {receivers: [otlp], exporters: [debug]}}\n"
        f"  telemetry: {{metrics: {{address: '127.0.0.1:{metrics_port}'}}, logs: {{level: info}}}}\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "kubenetmon", "run", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    gw = Gateway(proc, port, metrics_port)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            gw.log.append(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while not any("listening" in line for line in gw.log):
            assert proc.poll() is None, "".join(gw.log)
            assert time.monotonic() < deadline, "".join(gw.log)
            time.sleep(0.05)
        gw.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield gw
    finally:
        if gw.channel is not None:
            gw.channel.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def judge_and_send(gw: Gateway, data: bytes, batch_id: str) -> None:
    """The oracle's verdict, then the gateway's answer, which must match it."""
    try:
        parsed = ExportMetricsServiceRequest()
        parsed.ParseFromString(data)
        expected = decode_records_slow(parsed, LIMITS, time.time_ns())
    except DecodeError:
        with pytest.raises(grpc.RpcError) as info:
            gw.export(data, batch_id)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, info.value
        return
    response = gw.export(data, batch_id)
    ps = response.partial_success
    assert ps.rejected_data_points == expected.rejected_points, (ps, expected.rejected_by_reason)
    for reason in expected.rejected_by_reason:
        assert reason + ":" in ps.error_message
    if expected.records:
        gw.expected_points += expected.accepted_points
        gw.expected_bytes += sum(r.original_bytes + r.reply_bytes for r in expected.records)


_ids = iter(range(10**9))


@FUZZ
@given(st.data())
def test_structured_requests_get_the_oracles_answer(gateway: Gateway, data: Any) -> None:
    recs = data.draw(st.lists(records(NOW), min_size=1, max_size=10))
    encoded = encode_records_bytes(recs, {})
    if not encoded:
        return
    request = ExportMetricsServiceRequest.FromString(encoded[0])
    for _ in range(data.draw(st.integers(0, 3))):
        mutate(request, data.draw, NOW)
    payload = request.SerializeToString()
    batch_id = f"s-{next(_ids)}"
    judge_and_send(gateway, payload, batch_id)
    if data.draw(st.booleans()):
        gateway.export(payload, batch_id)  # a re-send after a lost answer: acknowledged, not stored again


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
                          st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))
def test_byte_mutations_get_the_oracles_answer(gateway: Gateway, edits: list[Any]) -> None:
    buf = bytearray(encode_records_bytes(make_records(6, start=time.time_ns() - 60 * SECOND), {})[0])
    for op, where, byte in edits:
        if not buf:
            break
        at = where % len(buf)
        if op == "flip":
            buf[at] ^= 1 << (byte % 8)
        elif op == "set":
            buf[at] = byte
        elif op == "insert":
            buf.insert(at, byte)
        elif op == "delete":
            del buf[at]
        elif op == "truncate":
            del buf[at:]
    judge_and_send(gateway, bytes(buf), f"b-{next(_ids)}")


def test_every_accepted_point_was_stored_exactly_once_and_the_gateway_is_healthy(gateway: Gateway) -> None:
    # Runs after the fuzz tests of this module (file order), on the same process.
    assert gateway.requests > 0
    deadline = time.monotonic() + 20
    while gateway.stored_bytes() < gateway.expected_bytes and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gateway.stored_bytes() == gateway.expected_bytes
    assert gateway.metric("kubenetmon_receiver_accepted_points_total") == gateway.expected_points
    assert gateway.proc.poll() is None
    assert not [line for line in gateway.log if "Traceback" in line], "".join(gateway.log[-50:])
    assert gateway.rss() < MAX_RSS
