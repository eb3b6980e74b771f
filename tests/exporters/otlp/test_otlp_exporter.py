"""otlp exporter → otlp receiver, in process over real gRPC on loopback.

Delivery guarantees under refusals, outages, lost acknowledgements and
restarts with a persistent queue; TLS, mTLS and bearer tokens; error mapping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubenetmon.errors import PermanentError, RetryableError
from kubenetmon.exporterhelper import Block
from kubenetmon.exporters.otlp import OtlpExporter, factory
from kubenetmon.flows import FlowBatch
from kubenetmon.otlp import decode_records_bytes
from kubenetmon.receivers.otlp import OtlpReceiver
from kubenetmon.testing import SinkConsumer, check_lifecycle, create_component
from tests.otlp.otlp_testkit import (
    T0,
    LoseAcknowledgements,
    RefusingConsumer,
    TLSFiles,
    by_identity,
    exporter_config,
    free_port,
    make_records,
    make_tls,
)

StartReceiver = Callable[..., OtlpReceiver]
StartExporter = Callable[..., OtlpExporter]


def batches(n: int, per_batch: int = 50) -> list[FlowBatch]:
    return [FlowBatch(records=make_records(per_batch, seed=i + 1)) for i in range(n)]


def all_records(bs: list[FlowBatch]) -> list[Any]:
    return by_identity([r for b in bs for r in b.records])


def wait_sent(exporter: OtlpExporter, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while exporter.m_sent.value() < n:
        assert time.monotonic() < deadline, f"only {exporter.m_sent.value()} of {n} flows sent"
        time.sleep(0.02)


def test_lifecycle_contract_holds() -> None:
    cfg = factory.config_model.model_validate({"endpoint": f"127.0.0.1:{free_port()}", "tls": {"insecure": True}})
    check_lifecycle(create_component(factory, cfg))


def test_receiver_gets_exactly_what_was_sent(receivers: StartReceiver, exporters: StartExporter) -> None:
    sink = SinkConsumer()
    r = receivers(sink)
    e = exporters(exporter_config(r.port, max_points_per_request=40))
    sent = batches(4)
    for b in sent:
        e.consume(b)
    assert sink.wait_for(lambda s: len(s.records) >= 200)
    wait_sent(e, 200)
    assert by_identity(sink.records) == all_records(sent)
    assert r.m_duplicates.value() == 0
    assert {x.node for x in sink.records} == {"node-a"}


def test_refusals_then_acceptance_lose_and_double_nothing(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    sink = RefusingConsumer(refusals=4, retry_after=0.05)
    r = receivers(sink)
    e = exporters(exporter_config(r.port))
    sent = batches(3)
    for b in sent:
        e.consume(b)
    wait_sent(e, 150)
    assert sink.refused == 4
    assert e.m_retries.value() >= 4
    assert by_identity(sink.records) == all_records(sent)
    assert r.m_refused.value() > 0


def test_receiver_down_for_a_while_then_up_loses_nothing(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    port = free_port()
    e = exporters(exporter_config(port))
    sent = batches(5, per_batch=20)
    for b in sent:
        e.consume(b)
    time.sleep(1.0)  # several failed attempts against a closed port
    assert e.m_send_failed.value() > 0 and e.m_sent.value() == 0
    sink = SinkConsumer()
    receivers(sink, port=port)
    wait_sent(e, 100)
    assert by_identity(sink.records) == all_records(sent)


def test_lost_acknowledgement_is_counted_once_thanks_to_the_batch_id(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    sink = SinkConsumer()
    lose = LoseAcknowledgements(count=2)
    r = receivers(sink, interceptors=(lose,))
    e = exporters(exporter_config(r.port))
    sent = batches(1)
    e.consume(sent[0])
    wait_sent(e, 50)
    assert lose.lost == 2
    assert len(sink.batches) == 1  # consumed by the first attempt only
    assert by_identity(sink.records) == all_records(sent)
    assert r.m_duplicates.value() > 0


def test_split_block_parts_have_their_own_ids_and_only_failed_parts_are_resent(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    sink = RefusingConsumer(refusals=1)  # the first part is refused once
    seen_ids: list[str] = []

    class RecordIds(grpc.ServerInterceptor):
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            seen_ids.extend(v for k, v in details.invocation_metadata if k == "kubenetmon-batch-id")
            return continuation(details)

    r = receivers(sink, interceptors=(RecordIds(),))
    e = exporters(exporter_config(r.port, max_points_per_request=20), run=False)
    block = Block("blk-1", batches(1, per_batch=30))
    parts = e.encode(block)
    assert len(parts) > 2
    with pytest.raises(RetryableError):
        e.push(block, timeout=3)
    e.push(block, timeout=3)
    assert seen_ids[0] == "blk-1:0"
    assert sorted(set(seen_ids)) == sorted(f"blk-1:{i}" for i in range(len(parts)))
    assert seen_ids.count("blk-1:0") == 2 and all(seen_ids.count(f"blk-1:{i}") == 1 for i in range(1, len(parts)))
    assert by_identity(sink.records) == all_records(block.batches)


def test_persistent_queue_and_restart_deliver_once(
    tmp_path: Path, receivers: StartReceiver, exporters: StartExporter
) -> None:
    sink = SinkConsumer()
    lose = LoseAcknowledgements(count=1_000)  # the first process never sees an acknowledgement
    r = receivers(sink, interceptors=(lose,))
    queue = {"storage": "persistent", "directory": str(tmp_path / "queue")}
    first = exporters(exporter_config(r.port, sending_queue=queue,
                                      retry_on_failure={"initial_interval": 0.1, "max_interval": 0.1}))
    sent = batches(1)
    first.consume(sent[0])
    assert sink.wait_for(lambda s: len(s.batches) == 1)
    time.sleep(0.3)  # a retry or two, each answered as a duplicate whose ack is lost too
    first.shutdown(0.2)  # "crash": the block stays on disk with its id
    assert first.m_sent.value() == 0
    assert list((tmp_path / "queue" / "blocks").glob("*.json"))
    lose.remaining = 0
    second = exporters(exporter_config(r.port, sending_queue=queue))
    wait_sent(second, 50)
    assert len(sink.batches) == 1
    assert by_identity(sink.records) == all_records(sent)
    assert r.m_duplicates.value() >= 50


def test_flows_batches_are_sent_per_4_4(exporters: StartExporter, receivers: StartReceiver) -> None:
    from kubenetmon.flows import Endpoint, Flow

    seen: list[bytes] = []

    class Capture(grpc.ServerInterceptor):
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = continuation(details)

            def behavior(requests: Any, context: Any) -> Any:
                def tee() -> Any:  # the receiver serves Export as stream→unary and reads the message itself
                    for request in requests:
                        seen.append(request)
                        yield request

                return handler.stream_unary(tee(), context)

            return grpc.stream_unary_rpc_method_handler(behavior)

    r = receivers(SinkConsumer(), interceptors=(Capture(),))
    e = exporters(exporter_config(r.port, resource={"service.name": "kubenetmon-gateway"}), run=False)
    flow = Flow(direction="out", transport="tcp", network_type="ipv4", local=Endpoint("10.0.0.1", 1),
                remote=Endpoint("10.0.0.2", 2), bytes=10, packets=1, start_ns=1, end_ns=2)
    e.push(Block("f1", [FlowBatch(flows=[flow])]), timeout=3)
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    request = ExportMetricsServiceRequest.FromString(seen[0])
    names = {m.name for sm in request.resource_metrics[0].scope_metrics for m in sm.metrics}
    assert names == {"kubenetmon.flow.bytes", "kubenetmon.flow.packets"}
    # the gateway's receiver reads only the §4.1 contract: flow metrics are rejected, not mistaken for records
    result = decode_records_bytes(seen[0])
    assert result.records == [] and result.rejected_points == 2


def test_error_mapping_of_the_exporter(receivers: StartReceiver, exporters: StartExporter) -> None:
    r = receivers(SinkConsumer(), auth={"bearer_token": "t0ken"})
    block = Block("b", batches(1, per_batch=2))
    no_token = exporters(exporter_config(r.port), run=False)
    with pytest.raises(PermanentError, match="UNAUTHENTICATED"):
        no_token.push(block, timeout=3)
    with_token = exporters(exporter_config(r.port, headers={"authorization": "Bearer t0ken"}), run=False)
    with_token.push(block, timeout=3)
    refusing = SinkConsumer()
    refusing.refuse = True
    r2 = receivers(refusing, backpressure_retry_after=7.0)
    e = exporters(exporter_config(r2.port), run=False)
    with pytest.raises(RetryableError) as info:
        e.push(Block("c", batches(1, per_batch=2)), timeout=3)
    assert info.value.retry_after == 7.0
    down = exporters(exporter_config(free_port()), run=False)
    with pytest.raises(RetryableError, match="UNAVAILABLE"):
        down.push(Block("d", batches(1, per_batch=2)), timeout=1)


def test_partial_success_is_counted_and_not_retried(receivers: StartReceiver, exporters: StartExporter) -> None:
    sink = SinkConsumer()
    r = receivers(sink)
    e = exporters(exporter_config(r.port), run=False)
    bad = make_records(3)
    bad[0].network_type = "ipv5"  # breaks the contract on the receiving side
    e.push(Block("p", [FlowBatch(records=bad)]), timeout=3)
    assert e.m_rejected.value() > 0
    assert len(sink.records) == 2


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


def test_tls_and_mtls_between_exporter_and_receiver(
    tls: TLSFiles, receivers: StartReceiver, exporters: StartExporter
) -> None:
    sink = SinkConsumer()
    r = receivers(sink, grpc={"tls": {"cert_file": str(tls.server_cert), "key_file": str(tls.server_key),
                                      "client_ca_file": str(tls.ca)}})
    block = Block("t", batches(1, per_batch=3))
    good = exporters(exporter_config(r.port, tls={"insecure": False, "ca_file": str(tls.ca),
                                                 "cert_file": str(tls.client_cert),
                                                 "key_file": str(tls.client_key)}), run=False)
    good.push(block, timeout=5)
    assert len(sink.records) == 3
    no_client_cert = exporters(exporter_config(r.port, tls={"insecure": False, "ca_file": str(tls.ca)}), run=False)
    with pytest.raises(RetryableError):
        no_client_cert.push(Block("t2", batches(1, per_batch=3)), timeout=3)
    wrong_ca = exporters(exporter_config(r.port, tls={"insecure": False, "ca_file": str(tls.other_ca),
                                                     "cert_file": str(tls.client_cert),
                                                     "key_file": str(tls.client_key)}), run=False)
    with pytest.raises(RetryableError):
        wrong_ca.push(Block("t3", batches(1, per_batch=3)), timeout=3)
    assert len(sink.records) == 3


def test_config_validation_messages() -> None:
    model = factory.config_model
    with pytest.raises(ValueError, match="without a scheme"):
        model.model_validate({"endpoint": "http://gateway:4317"})
    with pytest.raises(ValueError, match="lower case"):
        model.model_validate({"headers": {"Authorization": "x"}})
    with pytest.raises(ValueError, match="set together"):
        model.model_validate({"tls": {"cert_file": "c.pem"}})


def test_kill_9_with_persistent_queue_then_restart_delivers_once(
    tmp_path: Path, receivers: StartReceiver, exporters: StartExporter
) -> None:
    import signal
    import subprocess
    import sys

    sink = SinkConsumer()
    lose = LoseAcknowledgements(count=1_000_000)  # the child never sees an acknowledgement
    r = receivers(sink, interceptors=(lose,))
    queue_dir = tmp_path / "queue"
    root = Path(__file__).resolve().parents[3]
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.exporters.otlp.otlp_queue_child", str(r.port), str(queue_dir), "7", str(T0)],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "accepted"
        assert sink.wait_for(lambda s: len(s.batches) == 1, timeout=20)
        deadline = time.monotonic() + 20
        while r.m_duplicates.value() == 0:  # the child is retrying the delivered request
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    lose.remaining = 0
    restarted = exporters(exporter_config(r.port, sending_queue={"storage": "persistent",
                                                                   "directory": str(queue_dir)}))
    wait_sent(restarted, 40)
    assert len(sink.batches) == 1
    assert by_identity(sink.records) == by_identity(make_records(40, seed=7))
    assert not list((queue_dir / "items").glob("*.batch"))


def test_outage_longer_than_the_queue_drops_only_counted_data(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    port = free_port()
    e = exporters(exporter_config(port, sending_queue={"capacity": 2, "full_policy": "drop"}))
    sent = batches(5, per_batch=10)
    for b in sent:
        e.consume(b)
    dropped = e.m_dropped.value(reason="queue_full")
    assert dropped > 0
    sink = SinkConsumer()
    receivers(sink, port=port)
    wait_sent(e, 50 - dropped)
    time.sleep(0.2)
    assert len(sink.records) + dropped == 50
    assert len(sink.records) == e.m_sent.value()


def test_connections_recycled_by_max_connection_age_lose_nothing(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    peers: list[str] = []

    class RecordPeers(grpc.ServerInterceptor):
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = continuation(details)

            def behavior(requests: Any, context: Any) -> Any:
                peers.append(context.peer())  # ipv4:127.0.0.1:<client port>: one per connection
                return handler.stream_unary(requests, context)

            return grpc.stream_unary_rpc_method_handler(behavior)

    sink = SinkConsumer()
    r = receivers(sink, interceptors=(RecordPeers(),),
                  grpc={"keepalive": {"max_connection_age": 0.3, "max_connection_age_grace": 0.5}})
    e = exporters(exporter_config(r.port))
    sent = batches(12, per_batch=10)
    for b in sent:
        e.consume(b)
        time.sleep(0.1)  # spread over several connection lifetimes
    wait_sent(e, 120)
    assert len(set(peers)) > 1, "the connection was never recycled"
    assert by_identity(sink.records) == all_records(sent)


def test_busy_gateway_over_its_concurrency_limit_is_retried_not_dropped(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    import threading

    class SlowSink(SinkConsumer):
        def consume(self, batch: FlowBatch) -> None:
            time.sleep(0.5)
            super().consume(batch)

    sink = SlowSink()
    r = receivers(sink, grpc={"max_concurrent_requests": 1})
    e = exporters(exporter_config(r.port), run=False)
    errors: list[Exception] = []

    def push(block: Block) -> None:
        try:
            e.push(block, timeout=5)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(Block(f"c{i}", batches(1, per_batch=2)),)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], RetryableError), errors
    assert "RESOURCE_EXHAUSTED" in str(errors[0])


def test_a_batch_re_sent_by_its_producer_after_a_crash_is_counted_once(
    receivers: StartReceiver, exporters: StartExporter
) -> None:
    """The conntrack receiver re-sends an undelivered batch under its batch id after a kill -9;
    the exporter may also still hold the first copy. Both go out under that id."""
    sink = SinkConsumer()
    r = receivers(sink)
    # The exporter's own queue would drop the copy (sending_queue.dedup_window): turned off here, so
    # that both copies go out and the receiver's dedup is what counts the batch once.
    e = exporters(exporter_config(r.port, sending_queue={"dedup_window": 0}))
    first = batches(1)[0]
    first.batch_id = "cycle-7"
    again = first.copy()
    assert again.batch_id == "cycle-7"
    e.consume(first)
    e.consume(again)
    wait_sent(e, 2 * len(first))
    assert len(sink.batches) == 1
    assert by_identity(sink.records) == all_records([first])
    assert r.m_duplicates.value() > 0  # the second copy was acknowledged without being consumed
