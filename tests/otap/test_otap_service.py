"""Agent → gateway over OTAP: real otlp exporter and receiver, real gRPC on loopback.

Exactness against plain OTLP, fallback to Export, re-sends after a lost
BatchStatus, backpressure, and BARs refused whole without harm to others.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from kubenetmon.exporters.otlp import OtlpExporter
from kubenetmon.flows import FlowBatch
from kubenetmon.otap import ARROW_METRICS_METHOD, BatchArrowRecords, BatchStatus, RecordsProducer, StatusCode
from kubenetmon.otap._proto import ArrowPayloadType as T
from kubenetmon.receivers.otlp import OtlpReceiver
from kubenetmon.testing import SinkConsumer
from tests.otlp.otlp_testkit import RefusingConsumer, by_identity, exporter_config, make_records

StartReceiver = Callable[..., OtlpReceiver]
StartExporter = Callable[..., OtlpExporter]
ARROW = {"enabled": True}


def recorded_batches(n: int = 6) -> list[FlowBatch]:
    """Several intervals of one node's table: the same connections again, new ones, NAT, IPv6, zeros."""
    out = []
    for i in range(n):
        records = make_records(300, seed=i % 3, start=int(time.time_ns()) - 60 * 10**9 + i * 5 * 10**9)
        for r in records[::17]:
            r.original_bytes = r.original_packets = 0
        out.append(FlowBatch(records=records))
    return out


def expected(batches: list[FlowBatch]) -> list[Any]:
    return by_identity([r for b in batches for r in b.records
                        if r.original_bytes or r.reply_bytes or r.original_packets or r.reply_packets])


def wait_sent(exporter: OtlpExporter, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while exporter.m_sent.value() < n:
        assert time.monotonic() < deadline, f"only {exporter.m_sent.value()} of {n} sent"
        time.sleep(0.02)


def send_all(exporter: OtlpExporter, batches: list[FlowBatch]) -> None:
    for b in batches:
        exporter.consume(b)
    wait_sent(exporter, sum(len(b.records) for b in batches))


def test_otap_and_otlp_gateways_receive_exactly_the_same_records(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    otlp_sink, otap_sink = SinkConsumer(), SinkConsumer()
    otlp_gw, otap_gw = receivers(otlp_sink), receivers(otap_sink)
    plain = exporters(exporter_config(otlp_gw.port))
    arrow = exporters(exporter_config(otap_gw.port, arrow={**ARROW, "max_points_per_bar": 500}))
    batches = recorded_batches()
    send_all(plain, batches)
    send_all(arrow, batches)
    assert by_identity(otap_sink.records) == by_identity(otlp_sink.records) == expected(batches)
    assert arrow.m_bars.value(outcome="ok") >= len(batches) and arrow.m_requests.value(outcome="ok") == 0
    assert otap_gw.m_bars.value(outcome="ok") == arrow.m_bars.value(outcome="ok")
    assert otap_gw.m_requests.value(outcome="ok") == 0  # nothing came over Export
    assert otap_gw.m_accepted.value() == otlp_gw.m_accepted.value()


def test_an_agent_falls_back_to_export_when_the_gateway_has_no_arrow_service(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    sink = SinkConsumer()
    gateway = receivers(sink, arrow={"enabled": False})  # registers Export only: ArrowMetrics is UNIMPLEMENTED
    agent = exporters(exporter_config(gateway.port, arrow=ARROW))
    batches = recorded_batches(3)
    send_all(agent, batches)
    assert by_identity(sink.records) == expected(batches)
    assert agent.m_bars.value(outcome="fallback") == 1
    assert agent.m_bars.value(outcome="ok") == 0
    assert gateway.m_requests.value(outcome="ok") >= 3


class StatusHook(grpc.ServerInterceptor):  # type: ignore[misc]
    """Lets the receiver handle each BAR fully, then calls :meth:`before_status` before its BatchStatus goes out."""

    def before_status(self, context: grpc.ServicerContext) -> None:
        raise NotImplementedError

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.stream_stream is None:
            return handler
        inner = handler.stream_stream

        def behavior(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            for status in inner(requests, context):
                self.before_status(context)
                yield status

        return grpc.stream_stream_rpc_method_handler(
            behavior, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


class LoseStatuses(StatusHook):
    """Breaks the stream instead of answering the first ``count`` BARs: lost BatchStatuses."""

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.lost = 0

    def before_status(self, context: grpc.ServicerContext) -> None:
        if self.remaining > 0:
            self.remaining -= 1
            self.lost += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "stream broken after the BAR was handled (test)")


def test_a_lost_batch_status_resends_the_block_under_its_id_and_it_counts_once(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    sink = SinkConsumer()
    lose = LoseStatuses(count=2)
    gateway = receivers(sink, interceptors=(lose,))
    agent = exporters(exporter_config(gateway.port, arrow=ARROW))
    batches = recorded_batches(2)
    send_all(agent, batches)
    assert lose.lost == 2
    assert by_identity(sink.records) == expected(batches)
    assert len(sink.batches) == 2  # each block consumed by its first attempt only
    assert gateway.m_bars.value(outcome="duplicate") == 2
    assert agent.m_bars.value(outcome="retryable") == 2


def test_backpressure_is_a_retryable_status_and_nothing_is_lost_or_doubled(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    sink = RefusingConsumer(refusals=3, retry_after=0.05)
    gateway = receivers(sink)
    agent = exporters(exporter_config(gateway.port, arrow=ARROW))
    batches = recorded_batches(2)
    send_all(agent, batches)
    assert by_identity(sink.records) == expected(batches)
    assert gateway.m_bars.value(outcome="refused") == 3
    assert agent.m_bars.value(outcome="retryable") == 3


def test_bearer_token_is_required_on_the_arrow_stream(receivers: StartReceiver, exporters: StartExporter) -> None:
    sink = SinkConsumer()
    gateway = receivers(sink, auth={"bearer_token": "s3cret"})
    agent = exporters(exporter_config(gateway.port, arrow=ARROW, headers={"authorization": "Bearer s3cret"}))
    batches = recorded_batches(1)
    send_all(agent, batches)
    assert by_identity(sink.records) == expected(batches)
    with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        call = channel.stream_stream(ARROW_METRICS_METHOD)(iter([b""]))
        with pytest.raises(grpc.RpcError) as info:
            next(call)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


class RawStream:
    """A hand-driven ArrowMetrics stream: send bytes, read the next BatchStatus."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.requests: queue.Queue[bytes | None] = queue.Queue()
        self.call = self.channel.stream_stream(ARROW_METRICS_METHOD, response_deserializer=BatchStatus.FromString)(
            iter(self.requests.get, None))

    def send(self, data: bytes) -> Any:
        self.requests.put(data)
        return next(self.call)

    def close(self) -> None:
        self.requests.put(None)
        self.channel.close()


def test_bad_bars_get_a_clear_status_and_cost_neither_the_stream_nor_other_agents(
    receivers: StartReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    sink = SinkConsumer()
    gateway = receivers(sink)
    bad_agent, good_agent = RawStream(gateway.port), RawStream(gateway.port)
    try:
        producer, other = RecordsProducer(), RecordsProducer()
        table = FlowBatch(records=make_records(40)).record_table()
        first = producer.encode(table, {}, {"kubenetmon-batch-id": "a1"})
        assert bad_agent.send(first).status_code == StatusCode.OK

        statuses = {"not_a_bar": bad_agent.send(b"\xff\x00 not protobuf")}
        unknown = BatchArrowRecords.FromString(producer.encode(table, {}, {"kubenetmon-batch-id": "a2"}))
        unknown.arrow_payloads.add(schema_id="x", type=40, record=b"")  # SPANS in a metrics stream
        statuses["unknown_payload_type"] = bad_agent.send(unknown.SerializeToString())
        rootless = BatchArrowRecords(batch_id=99)
        rootless.arrow_payloads.add(schema_id="y", type=T.NUMBER_DATA_POINTS, record=b"")
        statuses["missing_root"] = bad_agent.send(rootless.SerializeToString())
        garbage = BatchArrowRecords(batch_id=100)
        garbage.arrow_payloads.add(schema_id="z", type=T.UNIVARIATE_METRICS, record=b"\xff\xff\xff\xffgarbage")
        statuses["invalid_ipc"] = bad_agent.send(garbage.SerializeToString())
        for reason, status in statuses.items():
            assert status.status_code == StatusCode.INVALID_ARGUMENT, reason
            assert status.status_message, reason
        assert statuses["unknown_payload_type"].batch_id == unknown.batch_id
        assert "type 40" in statuses["unknown_payload_type"].status_message
        assert "UNIVARIATE_METRICS" in statuses["missing_root"].status_message
        assert "Arrow IPC" in statuses["invalid_ipc"].status_message
        assert gateway.m_bars.value(outcome="invalid") == 1
        assert gateway.m_bars.value(outcome="unknown_payload_type") == 1
        assert gateway.m_bars.value(outcome="missing_root") == 1
        assert gateway.m_bars.value(outcome="invalid_ipc") == 1
        refusals = [r.getMessage() for r in caplog.records if "refused a BAR" in r.getMessage()]
        assert any("unknown_payload_type" in m for m in refusals) and any("missing_root" in m for m in refusals)

        # The same stream goes on (its IPC streams were untouched), and another agent never noticed.
        later = producer.encode(table, {}, {"kubenetmon-batch-id": "a3"})
        assert bad_agent.send(later).status_code == StatusCode.OK
        other_table = FlowBatch(records=make_records(40, node="node-b")).record_table()
        assert good_agent.send(other.encode(other_table, {}, {"kubenetmon-batch-id": "b1"})).status_code == 0
        assert sink.wait_for(lambda s: len(s.batches) == 3)
        assert gateway.is_ready()
    finally:
        bad_agent.close()
        good_agent.close()


def test_a_block_split_into_bars_is_acknowledged_per_bar(receivers: StartReceiver, exporters: StartExporter) -> None:
    seen: list[str] = []
    sink = RefusingConsumer(refusals=1)  # the first BAR is refused once; only it is re-sent

    class Spy(SinkConsumer):
        def consume(self, batch: FlowBatch) -> None:
            seen.append(batch.batch_id)
            sink.consume(batch)

    gateway = receivers(Spy())
    agent = exporters(exporter_config(gateway.port, arrow={**ARROW, "max_points_per_bar": 100}))
    batches = recorded_batches(1)
    send_all(agent, batches)
    assert by_identity(sink.records) == expected(batches)
    ids = [i.rsplit("/", 1)[-1] for i in seen]
    parts = sorted(set(ids), key=lambda i: int(i.rsplit(":", 1)[-1]))
    assert len(parts) > 5 and all(":" in i for i in parts)
    assert ids.count(parts[0]) == 2 and all(ids.count(i) == 1 for i in parts[1:])


def test_a_gateway_at_its_stream_bound_gets_the_block_by_export(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    sink = SinkConsumer()
    gateway = receivers(sink, arrow={"max_streams": 1})
    other = RawStream(gateway.port)  # another agent holds the only stream
    try:
        producer = RecordsProducer()
        table = FlowBatch(records=make_records(10, node="node-b")).record_table()
        assert other.send(producer.encode(table, {}, {"kubenetmon-batch-id": "o1"})).status_code == StatusCode.OK
        agent = exporters(exporter_config(gateway.port, arrow=ARROW))
        batches = recorded_batches(2)
        send_all(agent, batches)
        assert by_identity([r for r in sink.records if r.node == "node-a"]) == expected(batches)
        assert agent.m_bars.value(outcome="busy") == 2  # each block tried OTAP, then went by Export
        assert gateway.m_requests.value(outcome="too_many_streams") == 2
    finally:
        other.close()


def test_streams_are_renewed_after_their_lifetime_and_the_new_ones_start_their_state_over(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    sink = SinkConsumer()
    gateway = receivers(sink)
    agent = exporters(exporter_config(gateway.port, arrow={**ARROW, "max_stream_lifetime": 0.2}))
    batches = recorded_batches(4)
    for b in batches:
        agent.consume(b)
        wait_sent(agent, sum(len(x.records) for x in batches[: batches.index(b) + 1]))
        time.sleep(0.3)
    assert by_identity(sink.records) == expected(batches)
    assert agent._arrow is not None and agent._arrow.opened == 4  # a new stream (schema, dictionary) each time
    assert gateway.m_bars.value(outcome="ok") == 4


class HoldFirstStatus(StatusHook):
    """Holds the first BatchStatus back longer than the agent waits."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.held = 0

    def before_status(self, context: grpc.ServicerContext) -> None:
        if not self.held:
            self.held += 1
            time.sleep(self.hold)


def test_a_batch_status_that_never_comes_in_time_is_a_retry_on_a_new_stream_counted_once(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    sink = SinkConsumer()
    hold = HoldFirstStatus(hold=2.0)
    gateway = receivers(sink, interceptors=(hold,))
    agent = exporters(exporter_config(gateway.port, timeout=0.5, arrow=ARROW))
    batches = recorded_batches(1)
    send_all(agent, batches)
    assert hold.held == 1
    assert by_identity(sink.records) == expected(batches)
    assert len(sink.batches) == 1  # the late-acknowledged first attempt was consumed; the retry was a duplicate
    assert agent._arrow is not None and agent._arrow.opened == 2
    assert gateway.m_bars.value(outcome="duplicate") == 1
