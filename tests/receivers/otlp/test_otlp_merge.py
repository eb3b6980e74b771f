"""Requests that wait for the pipeline are delivered together (group commit), exactly once each.

Real gRPC on loopback into the real receiver; the persistent queue is the
real one (files in a test directory). The consumers here are test doubles of
a pipeline that is slow or pushes back, which is what makes requests wait.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest

from kubenetmon.errors import BackpressureError
from kubenetmon.exporterhelper.queue import PutResult, SendingQueue
from kubenetmon.flows import FlowBatch
from kubenetmon.otlp import decode_records
from kubenetmon.receivers.otlp import OtlpReceiver
from kubenetmon.receivers.otlp.merge import Merger
from tests.otlp.otlp_testkit import by_identity, make_records
from tests.receivers.otlp.test_otlp_receiver import Client, request_for

Start = Callable[..., OtlpReceiver]
# Every test client is 127.0.0.1: room for all of them at once.
PEERS = {"max_requests_per_peer": 16}


class SlowPipeline:
    """Records every batch; the first delivery waits until ``others`` requests are queued behind it."""

    def __init__(self, receiver: Callable[[], OtlpReceiver | None], others: int) -> None:
        self.receiver = receiver
        self.others = others
        self.batches: list[FlowBatch] = []
        self.refuse = False
        self.calls = 0
        self.lock = threading.Lock()

    def consume(self, batch: FlowBatch) -> None:
        r = self.receiver()
        self.calls += 1
        if self.calls == 1 and r is not None and r._merger is not None:
            deadline = time.monotonic() + 10
            while len(r._merger._waiting) < self.others and time.monotonic() < deadline:
                time.sleep(0.01)
        if self.refuse:
            raise BackpressureError("pipeline refuses (test)")
        with self.lock:
            self.batches.append(batch)

    @property
    def records(self) -> list[Any]:
        return [r for b in self.batches for r in b.records]


def _send_all(port: int, n: int, ids: list[str]) -> list[Any]:
    """``n`` requests at once from ``n`` clients; the response or the gRPC error of each."""
    clients = [Client(port) for _ in range(n)]
    out: list[Any] = [None] * n

    def send(i: int) -> None:
        try:
            out[i] = clients[i].export(request_for(5, node=f"node-{i}", seed=i), batch_id=ids[i])
        except grpc.RpcError as exc:
            out[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in clients:
        c.channel.close()
    return out


def test_requests_waiting_together_are_one_batch_and_each_is_counted_once(receivers: Start) -> None:
    holder: list[OtlpReceiver] = []
    pipeline = SlowPipeline(lambda: holder[0] if holder else None, others=7)
    # linger 0: the leader takes only what waits (with linger, the seven being decoded would join the first)
    r = receivers(pipeline, grpc=PEERS, merge={"linger": 0})
    holder.append(r)
    ids = [f"b{i}" for i in range(8)]
    responses = _send_all(r.port, 8, ids)
    assert all(not isinstance(x, grpc.RpcError) for x in responses), responses
    expected = [rec for i in range(8) for rec in decode_records(request_for(5, node=f"node-{i}", seed=i)).records]
    assert by_identity(pipeline.records) == by_identity(expected)
    # The first request went alone; the seven that waited behind it went as one batch, named by all seven.
    assert len(pipeline.batches) == 2, [b.batch_ids() for b in pipeline.batches]
    merged = pipeline.batches[1]
    assert len(merged.batch_ids()) == 7
    assert {i.rsplit("/", 1)[-1] for i in pipeline.batches[0].batch_ids() + merged.batch_ids()} == set(ids)
    assert r._merger is not None and r._merger.merged_requests == 7


def test_backpressure_refuses_every_request_of_a_merged_batch_and_retries_count_once(receivers: Start) -> None:
    holder: list[OtlpReceiver] = []
    pipeline = SlowPipeline(lambda: holder[0] if holder else None, others=5)
    pipeline.refuse = True
    r = receivers(pipeline, grpc=PEERS, merge={"linger": 0})
    holder.append(r)
    ids = [f"p{i}" for i in range(6)]
    refused = _send_all(r.port, 6, ids)
    assert all(isinstance(x, grpc.RpcError) and x.code() == grpc.StatusCode.UNAVAILABLE for x in refused)
    assert pipeline.records == []
    pipeline.refuse = False
    assert all(not isinstance(x, grpc.RpcError) for x in _send_all(r.port, 6, ids))  # the agents' retries
    expected = [rec for i in range(6) for rec in decode_records(request_for(5, node=f"node-{i}", seed=i)).records]
    assert by_identity(pipeline.records) == by_identity(expected)


def test_merging_can_be_turned_off(receivers: Start) -> None:
    holder: list[OtlpReceiver] = []
    pipeline = SlowPipeline(lambda: holder[0] if holder else None, others=0)
    r = receivers(pipeline, grpc=PEERS, merge={"enabled": False})
    holder.append(r)
    assert all(not isinstance(x, grpc.RpcError) for x in _send_all(r.port, 5, [f"o{i}" for i in range(5)]))
    assert len(pipeline.batches) == 5 and all(len(b.batch_ids()) == 1 for b in pipeline.batches)


def _table(seed: int, n: int = 4) -> pa.RecordBatch:
    return FlowBatch(records=make_records(n, node=f"node-{seed}", seed=seed)).record_table()


class _Recorder:
    """A pipeline that records the batch ids it was handed, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, table: pa.RecordBatch, batch_id: str) -> None:
        self.names.append(batch_id)


def _decoding(merger: Merger, seed: int, name: str, gate: threading.Event,
              fail: bool = False) -> threading.Thread:
    """A request announced at once that 'decodes' until ``gate`` opens, then submits (or fails to decode)."""
    announced = threading.Event()

    def run() -> None:
        try:
            with merger.announce():
                announced.set()
                gate.wait(30)
                if fail:
                    raise ValueError("bad request (test)")
                merger.submit(_table(seed), name)
        except ValueError:
            pass

    thread = threading.Thread(target=run)
    thread.start()
    assert announced.wait(10)
    return thread


def test_a_leader_waits_for_the_requests_being_decoded_and_takes_them_along() -> None:
    recorder = _Recorder()
    merger = Merger(recorder, linger=30)
    gate = threading.Event()
    others = [_decoding(merger, s, f"n{s}", gate) for s in (1, 2)]
    leader = threading.Thread(target=merger.submit, args=(_table(0), "n0"))
    leader.start()
    while not merger._busy:
        time.sleep(0.005)
    assert recorder.names == []  # two requests are on their way: the leader waits for them
    gate.set()
    for t in (leader, *others):
        t.join(10)
        assert not t.is_alive()
    assert len(recorder.names) == 1  # one batch, in arrival order: the leader's first
    first, *rest = recorder.names[0].split("\n")
    assert first == "n0" and sorted(rest) == ["n1", "n2"]
    assert merger.merged_requests == 3 and merger.lingered > 0


def test_a_request_that_finds_nothing_on_its_way_goes_on_at_once() -> None:
    recorder = _Recorder()
    merger = Merger(recorder, linger=30)
    merger.submit(_table(0), "alone")
    assert recorder.names == ["alone"] and merger.lingered == 0


def test_a_request_that_fails_to_decode_releases_the_waiting_leader() -> None:
    recorder = _Recorder()
    merger = Merger(recorder, linger=30)  # were the failed request not withdrawn, the leader would wait 30 s
    gate = threading.Event()
    failing = _decoding(merger, 1, "n1", gate, fail=True)
    leader = threading.Thread(target=merger.submit, args=(_table(0), "n0"))
    leader.start()
    while not merger._busy:
        time.sleep(0.005)
    gate.set()
    for t in (failing, leader):
        t.join(10)
        assert not t.is_alive()
    assert recorder.names == ["n0"] and merger._announced == 0


def test_the_leader_waits_no_longer_than_linger_for_a_slow_request() -> None:
    recorder = _Recorder()
    merger = Merger(recorder, linger=0.05)
    gate = threading.Event()
    slow = _decoding(merger, 1, "n1", gate)
    merger.submit(_table(0), "n0")  # returns although n1 is still being decoded
    assert recorder.names == ["n0"]
    gate.set()
    slow.join(10)
    assert recorder.names == ["n0", "n1"]


def test_a_full_group_goes_on_without_waiting_for_more() -> None:
    recorder = _Recorder()
    merger = Merger(recorder, max_records=8, linger=30)
    gate = threading.Event()
    slow = _decoding(merger, 1, "n1", gate)
    merger.submit(_table(0, n=8), "n0")  # as many records as a group may hold: no use waiting for n1
    assert recorder.names == ["n0"]
    gate.set()
    slow.join(10)
    assert recorder.names == ["n0", "n1"]


def test_a_merged_batch_holding_a_copy_already_queued_goes_on_in_parts(tmp_path: Path) -> None:
    """After a gateway crash an agent re-sends a batch the queue holds: only the new part is queued."""
    queue = SendingQueue(100, tmp_path / "q", dedup_window=3600)
    assert queue.put(FlowBatch(records=_table(1), batch_id="otlp/node-1/a")) == PutResult.QUEUED
    results: list[tuple[str, PutResult]] = []
    gate = threading.Event()

    def deliver(table: pa.RecordBatch, batch_id: str) -> None:
        if batch_id == "otlp/node-0/g":
            gate.wait(10)
        results.append((batch_id, queue.put(FlowBatch(records=table, batch_id=batch_id))))

    merger = Merger(deliver)
    first = threading.Thread(target=merger.submit, args=(_table(0), "otlp/node-0/g"))
    first.start()
    while not merger._busy:
        time.sleep(0.005)
    others = [threading.Thread(target=merger.submit, args=(_table(s), f"otlp/node-{s}/{name}"))
              for s, name in ((1, "a"), (2, "b"))]
    for t in others:
        t.start()
    while len(merger._waiting) < 2:
        time.sleep(0.005)
    gate.set()
    for t in (first, *others):
        t.join(10)
    # The merged {a, b} was refused by the queue as mixed, then a went alone (a duplicate) and b alone.
    assert results == [
        ("otlp/node-0/g", PutResult.QUEUED),
        ("otlp/node-1/a", PutResult.DUPLICATE),
        ("otlp/node-2/b", PutResult.QUEUED),
    ]
    assert merger.merged_requests == 0


def test_every_name_of_a_merged_batch_is_remembered_across_a_restart(tmp_path: Path) -> None:
    queue = SendingQueue(100, tmp_path / "q", dedup_window=3600)
    merged = pa.concat_batches([_table(1), _table(2)])
    assert queue.put(FlowBatch(records=merged, batch_id="otlp/n1/x\notlp/n2/y")) == PutResult.QUEUED
    reopened = SendingQueue(100, tmp_path / "q", dedup_window=3600)  # as after kill -9: read back from disk
    assert reopened.put(FlowBatch(records=_table(1), batch_id="otlp/n1/x")) == PutResult.DUPLICATE
    assert reopened.put(FlowBatch(records=_table(2), batch_id="otlp/n2/y")) == PutResult.DUPLICATE
    assert reopened.put(FlowBatch(records=_table(3), batch_id="otlp/n3/z")) == PutResult.QUEUED
    blocks = Counter(len(b) for b in reopened._all_batches())
    assert sum(blocks.values()) == 2


@pytest.mark.parametrize("bad", ["a\nb", "x\n"])
def test_a_batch_id_with_a_line_break_is_refused(receivers: Start, bad: str) -> None:
    r = receivers(SlowPipeline(lambda: None, others=0))
    client = Client(r.port)
    try:
        with pytest.raises(grpc.RpcError) as err:
            client.export(request_for(2), batch_id=bad)
        # gRPC itself refuses a line break in metadata before it is sent (the receiver checks anyway, for OTAP
        # headers, which are not gRPC metadata).
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)
    finally:
        client.channel.close()
