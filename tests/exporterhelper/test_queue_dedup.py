"""Named batches re-sent by their producer are not queued twice (memory, and persistent across restarts)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from kubenetmon.exporterhelper import PutResult, SendingQueue
from kubenetmon.exporterhelper import queue as queue_module
from kubenetmon.flows import FlowBatch
from tests.flowgen import batch


def named(batch_id: str, n: int = 1) -> FlowBatch:
    b = batch(n)
    b.batch_id = batch_id
    return b


def take_and_ack(q: SendingQueue) -> None:
    done = threading.Event()
    done.set()
    block = q.take_block(max_flows=100, max_wait=0, align=False, drain=done)
    assert block is not None
    q.ack(block)


def test_a_named_batch_is_refused_while_queued_and_after_delivery() -> None:
    q = SendingQueue(capacity=10, dedup_window=60)
    assert q.put(named("c-1")) == PutResult.QUEUED
    assert q.put(named("c-1")) == PutResult.DUPLICATE
    take_and_ack(q)
    assert q.put(named("c-1")) == PutResult.DUPLICATE
    assert q.put(named("c-2")) == PutResult.QUEUED
    assert q.put(batch(1)) == PutResult.QUEUED and q.put(batch(1)) == PutResult.QUEUED  # unnamed: never deduplicated
    assert q.size() == 3


def test_ids_are_forgotten_after_the_window_or_never_kept_without_one() -> None:
    q = SendingQueue(capacity=10, dedup_window=0.05)
    q.put(named("c-1"))
    take_and_ack(q)
    time.sleep(0.1)
    assert q.put(named("c-1")) == PutResult.QUEUED
    off = SendingQueue(capacity=10, dedup_window=0)
    assert off.put(named("c-1")) == PutResult.QUEUED and off.put(named("c-1")) == PutResult.QUEUED


def test_persistent_queue_remembers_queued_and_delivered_ids_across_restarts(tmp_path: Path) -> None:
    q = SendingQueue(capacity=10, directory=tmp_path, dedup_window=60)
    q.put(named("c-1"))
    q.put(named("c-2"))
    take_and_ack(q)  # c-1 delivered; c-2 still on disk
    again = SendingQueue(capacity=10, directory=tmp_path, dedup_window=60)
    assert again.put(named("c-1")) == PutResult.DUPLICATE
    assert again.put(named("c-2")) == PutResult.DUPLICATE
    with open(tmp_path / "delivered.log", "a") as fh:
        fh.write("17000")  # a torn line from a crash mid-append
    third = SendingQueue(capacity=10, directory=tmp_path, dedup_window=60)
    assert third.put(named("c-1")) == PutResult.DUPLICATE
    assert third.put(named("c-3")) == PutResult.QUEUED
    assert third.size() == 2


def test_ids_appended_after_a_torn_line_are_read_back(tmp_path: Path) -> None:
    q = SendingQueue(capacity=10, directory=tmp_path, dedup_window=60)
    with open(tmp_path / "delivered.log", "a") as fh:
        fh.write("17000")
    again = SendingQueue(capacity=10, directory=tmp_path, dedup_window=60)
    again.put(named("c-9"))
    take_and_ack(again)
    assert SendingQueue(capacity=10, directory=tmp_path, dedup_window=60).put(named("c-9")) == PutResult.DUPLICATE
    assert q.size() == 0


def test_the_delivered_log_stays_bounded_while_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "_COMPACT_SLACK", 10)
    q = SendingQueue(capacity=10, directory=tmp_path, dedup_window=0.05)
    for i in range(60):
        q.put(named(f"c-{i}"))
        take_and_ack(q)
        if i == 40:
            time.sleep(0.1)  # the first 41 ids expire
    lines = (tmp_path / "delivered.log").read_text().splitlines()
    assert len(lines) <= 2 * 19 + 10
    assert SendingQueue(capacity=10, directory=tmp_path, dedup_window=60).put(named("c-59")) == PutResult.DUPLICATE
