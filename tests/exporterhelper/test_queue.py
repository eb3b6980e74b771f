from __future__ import annotations

import threading
from pathlib import Path

from kubenetmon.exporterhelper import SendingQueue
from tests.flowgen import batch


def never() -> threading.Event:
    return threading.Event()


def drained() -> threading.Event:
    e = threading.Event()
    e.set()
    return e


def test_put_respects_capacity() -> None:
    q = SendingQueue(capacity=2)
    assert q.put(batch(1)) and q.put(batch(1))
    assert not q.put(batch(1), timeout=0.05)
    assert q.size() == 2


def test_blocks_gather_batches_up_to_max_flows() -> None:
    q = SendingQueue(capacity=10)
    for i in range(5):
        q.put(batch(3, start=i * 10))
    block = q.take_block(max_flows=7, max_wait=10, align=False, drain=drained())
    assert block is not None
    assert [len(b) for b in block.batches] == [3, 3, 3]  # stops once >= 7
    assert len(block) == 9
    rest = q.take_block(max_flows=100, max_wait=10, align=False, drain=drained())
    assert rest is not None and len(rest) == 6


def test_max_wait_zero_sends_batches_one_by_one() -> None:
    q = SendingQueue(capacity=10)
    q.put(batch(1))
    q.put(batch(2))
    first = q.take_block(max_flows=1000, max_wait=0, align=False, drain=never())
    assert first is not None and len(first.batches) == 1 and len(first) == 1


def test_acked_blocks_free_capacity() -> None:
    q = SendingQueue(capacity=1)
    q.put(batch(1))
    block = q.take_block(max_flows=10, max_wait=0, align=False, drain=never())
    assert block is not None
    assert not q.put(batch(1), timeout=0.01)  # in flight still counts
    q.ack(block)
    assert q.put(batch(1), timeout=0.01)


def test_persistent_queue_recovers_blocks_with_their_ids_then_pending_batches(tmp_path: Path) -> None:
    q = SendingQueue(capacity=10, directory=tmp_path)
    for i in range(4):
        q.put(batch(1, start=i + 1))
    in_flight = q.take_block(max_flows=2, max_wait=5, align=False, drain=drained())
    assert in_flight is not None and len(in_flight) == 2
    # The process dies here: nothing acknowledged. A new queue on the same directory:
    again = SendingQueue(capacity=10, directory=tmp_path)
    assert again.size() == 4
    recovered = again.take_block(max_flows=100, max_wait=5, align=False, drain=drained())
    assert recovered is not None and recovered.recovered
    assert recovered.id == in_flight.id
    assert [f.local.address for f in recovered.flows()] == [f.local.address for f in in_flight.flows()]
    again.ack(recovered)
    pending = again.take_block(max_flows=100, max_wait=5, align=False, drain=drained())
    assert pending is not None and [f.local.address for f in pending.flows()] == ["10.0.0.3", "10.0.0.4"]
    again.ack(pending)
    assert SendingQueue(capacity=10, directory=tmp_path).size() == 0
    assert not list((tmp_path / "items").iterdir()) and not list((tmp_path / "blocks").iterdir())


def test_memory_queue_reports_what_close_loses() -> None:
    q = SendingQueue(capacity=10)
    q.put(batch(2))
    q.put(batch(3))
    lost = q.close()
    assert sum(len(b) for b in lost) == 5
    assert not q.put(batch(1))


def test_block_key_is_the_producers_batch_id_for_a_single_named_batch() -> None:
    from kubenetmon.exporterhelper import Block

    named = batch(1)
    named.batch_id = "cycle-42"
    assert Block("blk", [named]).key == "cycle-42"
    assert Block("blk", [batch(1)]).key == "blk"  # unnamed
    assert Block("blk", [named, batch(1)]).key == "blk"  # several batches: the block's own id
