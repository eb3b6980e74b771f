"""The persistent queue stores Arrow IPC (never pickle), keeps batch ids, and survives bad items and bad rows."""

from __future__ import annotations

import pickle
import pickletools
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from kubenetmon.exporterhelper import Block, SendingQueue
from kubenetmon.exporterhelper.queue import UnstorableBatchError
from kubenetmon.flows import Endpoint, FlowBatch
from kubenetmon.testing import StaticHost
from tests.exporterhelper.test_exporter import ScriptedExporter, config, wait_until
from tests.flowgen import batch, flow, record


def drained() -> threading.Event:
    e = threading.Event()
    e.set()
    return e


def test_items_on_disk_are_arrow_ipc_with_the_batch_id_and_read_back_equal(tmp_path: Path) -> None:
    columnar = FlowBatch(records=FlowBatch(records=[record(1), record(2)]).record_table(),
                         flows=batch(3).flow_table(), batch_id="cycle-7")
    q = SendingQueue(capacity=10, directory=tmp_path)
    q.put(columnar)
    (item,) = list((tmp_path / "items").iterdir())
    data = item.read_bytes()
    assert data[:4] == b"\xff\xff\xff\xff"  # an Arrow IPC stream (continuation marker), not a pickle
    with pytest.raises(Exception):  # noqa: B017 - any failure: it is not a pickle stream
        list(pickletools.genops(data))
    reader = pa.ipc.open_stream(pa.BufferReader(data))
    assert reader.schema.metadata[b"kubenetmon.batch_id"] == b"cycle-7"

    again = SendingQueue(capacity=10, directory=tmp_path)
    block = again.take_block(max_flows=100, max_wait=0, align=False, drain=drained())
    assert block is not None and block.key == "cycle-7"
    (got,) = block.batches
    assert got.record_table().equals(columnar.record_table())
    assert got.flow_table().equals(columnar.flow_table())


def test_an_unreadable_item_is_moved_aside_and_the_rest_is_delivered(tmp_path: Path) -> None:
    q = SendingQueue(capacity=10, directory=tmp_path)
    for i in range(4):
        q.put(batch(1, start=i + 1))
    items = sorted((tmp_path / "items").iterdir())
    items[1].write_bytes(items[1].read_bytes()[:40])  # a torn file (e.g. a disk fault)
    items[2].write_bytes(pickle.dumps(["written by an older version"]))  # never loaded: pickle runs code
    again = SendingQueue(capacity=10, directory=tmp_path)
    assert again.size() == 2
    assert sorted(p.name for p in (tmp_path / "corrupt").iterdir()) == [items[1].name, items[2].name]
    block = again.take_block(max_flows=100, max_wait=0.01, align=False, drain=drained())
    assert block is not None
    assert [f.local.address for f in block.flows()] == ["10.0.0.1", "10.0.0.4"]


def test_a_batch_that_does_not_fit_the_contract_is_refused_by_the_persistent_queue(tmp_path: Path) -> None:
    bad = flow(1)
    bad.local.pod = 123  # type: ignore[assignment]
    with pytest.raises(UnstorableBatchError, match="contract"):
        SendingQueue(capacity=10, directory=tmp_path).put(FlowBatch(flows=[bad]))


def test_the_exporter_queues_the_rows_that_fit_and_counts_the_others(tmp_path: Path) -> None:
    exporter = ScriptedExporter(config(sending_queue={"storage": "persistent", "directory": str(tmp_path)}))
    exporter.start(StaticHost())
    try:
        rows = [flow(1), flow(2), flow(3)]
        rows[1].local = Endpoint(address="10.0.0.2", port=70000)  # does not fit uint16
        exporter.consume(FlowBatch(flows=rows, batch_id="b-1"))
        wait_until(lambda: sum(len(b) for b in exporter.delivered) == 2)
    finally:
        exporter.shutdown()
    assert [f.local.address for b in exporter.delivered for f in b.flows()] == ["10.0.0.1", "10.0.0.3"]
    assert exporter.delivered[0].key == "b-1"
    assert exporter.metric("exporter_dropped_flows_total", reason="invalid_row") == 1


def test_merging_columnar_batches_makes_no_rows() -> None:
    block = Block("b", [FlowBatch(flows=batch(2).flow_table()), FlowBatch(flows=batch(3, start=5).flow_table())])
    merged = block.merged()
    assert merged.num_flows == 5
    assert merged.flow_table().column("local_pod").to_pylist() == [f"client-{i}" for i in (1, 2, 5, 6, 7)]


def test_a_persistent_queue_keeps_queued_batches_on_disk_only(tmp_path: Path) -> None:
    """A long ClickHouse outage fills the disk, not the memory: a queued batch lives in its item file only."""
    q = SendingQueue(capacity=10, directory=tmp_path, memory_rows=4)
    batches = [FlowBatch(flows=batch(3, start=3 * i + 1).flow_table(), batch_id=f"b{i}") for i in range(3)]
    expected = [b.flow_table() for b in batches]
    for b in batches:
        q.put(b)
    # Within the budget (4 rows) the first batch stays in memory; for the others the queue holds their size
    # and names, not their columns.
    assert [isinstance(held, FlowBatch) for _, _, held in q._pending] == [True, False, False]
    block = q.take_block(max_flows=100, max_wait=0, align=False, drain=drained())
    assert block is not None and block.batches[0].flow_table().equals(expected[0])
    block = q.take_block(max_flows=100, max_wait=0.01, align=False, drain=drained())
    assert block is not None
    assert [b.batch_id for b in block.batches] == ["b1", "b2"]
    assert [b.flow_table().equals(e) for b, e in zip(block.batches, expected[1:], strict=True)] == [True, True]


def test_an_item_spoiled_while_queued_leaves_its_block_and_is_moved_aside(tmp_path: Path) -> None:
    q = SendingQueue(capacity=10, directory=tmp_path, memory_rows=0)
    for i in range(3):
        q.put(batch(1, start=i + 1))
    before = q.bytes_on_disk
    items = sorted((tmp_path / "items").iterdir())
    items[1].write_bytes(items[1].read_bytes()[:40])  # a disk fault after it was accepted
    block = q.take_block(max_flows=100, max_wait=0.01, align=False, drain=drained())
    assert block is not None
    assert [f.local.address for f in block.flows()] == ["10.0.0.1", "10.0.0.3"]
    assert [p.name for p in (tmp_path / "corrupt").iterdir()] == [items[1].name]
    q.ack(block)
    assert q.size() == 0 and q.bytes_on_disk == 0 and before > 0
