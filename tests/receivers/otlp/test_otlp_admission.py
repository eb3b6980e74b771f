"""Stalled streams, auth before the body, counted refusals (issue 16 items 3 and 10).

Real gRPC server on loopback; the misbehaving clients are raw HTTP/2
connections from 127.0.0.2 that open Export calls and never send the
message; the well-behaved agent is a real gRPC channel from 127.0.0.1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from kubenetmon.otlp import encode_records_bytes
from kubenetmon.receivers.otlp import OtlpReceiver
from kubenetmon.testing import SinkConsumer
from tests.otlp.otlp_testkit import make_records
from tests.receivers.otlp.rawh2 import EXPORT, StallingClient

Start = Callable[..., OtlpReceiver]


@pytest.fixture
def stallers() -> Iterator[Callable[..., StallingClient]]:
    made: list[StallingClient] = []

    def make(port: int, source: str = "127.0.0.2") -> StallingClient:
        c = StallingClient(port, source)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def agent_export(port: int, timeout: float = 3.0, **metadata: str) -> ExportMetricsServiceResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(EXPORT, response_deserializer=ExportMetricsServiceResponse.FromString)
        data = encode_records_bytes(make_records(4), {})[0]
        return call(data, timeout=timeout, metadata=list(metadata.items()))  # type: ignore[no-any-return]


def outcome(r: OtlpReceiver, name: str) -> float:
    return float(r.m_requests.value(outcome=name))


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_stalled_calls_from_one_client_leave_room_for_a_valid_agent(
    receivers: Start, stallers: Callable[..., StallingClient], caplog: pytest.LogCaptureFixture
) -> None:
    sink = SinkConsumer()
    r = receivers(sink, grpc={"workers": 4, "max_concurrent_requests": 16, "max_requests_per_peer": 4,
                              "read_timeout": 30})
    attacker = stallers(r.port)
    streams = [attacker.open() for _ in range(20)]
    # Beyond its 4 slots the stalling client is refused at once, without waiting for its body.
    # Which 4 of the 20 hold the slots is not fixed: the server's threads admit the
    # calls in whatever order they are scheduled.
    assert attacker.wait_ended(16, timeout=5), attacker.ended
    stalled = set(streams) - attacker.ended
    assert len(stalled) == 4, stalled
    assert outcome(r, "too_many_from_peer") == 16
    # A valid agent (another address) still gets through while the 4 stay stalled.
    with caplog.at_level(logging.WARNING):
        response = agent_export(r.port)
    assert response.partial_success.rejected_data_points == 0
    assert len(sink.batches) == 1
    assert not stalled & attacker.ended


def test_a_stalled_call_is_cancelled_after_the_read_timeout_and_frees_its_slot(
    receivers: Start, stallers: Callable[..., StallingClient], caplog: pytest.LogCaptureFixture
) -> None:
    sink = SinkConsumer()
    r = receivers(sink, grpc={"max_requests_per_peer": 2, "read_timeout": 0.5})
    attacker = stallers(r.port)
    with caplog.at_level(logging.WARNING):
        first = [attacker.open() for _ in range(2)]
        assert attacker.wait_ended(2, timeout=5)
        assert set(first) <= attacker.ended
        assert wait_for(lambda: outcome(r, "read_timeout") == 2)
    assert "read_timeout" in caplog.text
    # Its slots are free again: the same client address may open calls.
    again = attacker.open()
    assert attacker.wait_ended(3, timeout=5) and again in attacker.ended
    assert outcome(r, "too_many_from_peer") == 0


def test_wrong_tokens_are_refused_from_the_metadata_before_the_body(
    receivers: Start, stallers: Callable[..., StallingClient], caplog: pytest.LogCaptureFixture
) -> None:
    sink = SinkConsumer()
    r = receivers(sink, auth={"bearer_token": "s3cret"},
                  grpc={"workers": 2, "max_concurrent_requests": 4, "max_requests_per_peer": 50,
                        "read_timeout": 60})
    attacker = stallers(r.port)
    with caplog.at_level(logging.WARNING):
        for i in range(30):
            attacker.open([("authorization", "Bearer wrong")] if i % 2 else [])
        # Every call is answered although none sent its body (and the read timeout is long).
        assert attacker.wait_ended(30, timeout=5), len(attacker.ended)
    assert wait_for(lambda: outcome(r, "unauthenticated") == 30)
    assert "unauthenticated" in caplog.text
    assert agent_export(r.port, authorization="Bearer s3cret").partial_success.rejected_data_points == 0
    assert len(sink.batches) == 1


def test_the_global_bound_refuses_with_resource_exhausted_counted_and_logged(
    receivers: Start, stallers: Callable[..., StallingClient], caplog: pytest.LogCaptureFixture
) -> None:
    r = receivers(SinkConsumer(), grpc={"max_concurrent_requests": 2, "max_requests_per_peer": 10,
                                        "read_timeout": 30})
    attacker = stallers(r.port)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            attacker.open()
        assert attacker.wait_ended(3, timeout=5)
    assert outcome(r, "too_many_requests") == 3
    assert "too_many_requests" in caplog.text
    with pytest.raises(grpc.RpcError) as info:
        agent_export(r.port)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert outcome(r, "too_many_requests") == 4


def test_an_oversize_message_is_resource_exhausted_and_counted(
    receivers: Start, caplog: pytest.LogCaptureFixture
) -> None:
    r = receivers(SinkConsumer(), grpc={"max_recv_msg_size_mib": 1})
    with grpc.insecure_channel(f"127.0.0.1:{r.port}") as channel, caplog.at_level(logging.WARNING):
        call = channel.unary_unary(EXPORT)
        with pytest.raises(grpc.RpcError) as info:
            call(b"\x0a\xff\xff\x7f" + b"x" * (2 << 20), timeout=5)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert wait_for(lambda: outcome(r, "too_large_or_cancelled") == 1)
    assert "max_recv_msg_size_mib" in caplog.text


def test_invalid_argument_is_logged(receivers: Start, caplog: pytest.LogCaptureFixture) -> None:
    r = receivers(SinkConsumer())
    with (grpc.insecure_channel(f"127.0.0.1:{r.port}") as channel, caplog.at_level(logging.WARNING),
          pytest.raises(grpc.RpcError) as info):
        channel.unary_unary(EXPORT)(b"\xff\xff not protobuf", timeout=5)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert outcome(r, "invalid") == 1
    assert "invalid request" in caplog.text
