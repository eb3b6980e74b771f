"""Group commit: requests that arrive while the pipeline is busy go on together, as one batch.

Every stage has a cost per batch besides its cost per record (numpy and Arrow
calls, a snapshot of the inventory, a persistent queue item and its fsync):
measured in one thread, the receive path cost 15.7 µs per record in batches
of 500 records, 7.2 in batches of 2,000 and 3.2 in batches of 10,000 — about
6.6 ms per batch. Agents send one request per interval each, so a gateway
sees many small batches at once.

The first request to arrive while nobody delivers becomes the *leader*: it
takes every request waiting (in arrival order, up to ``max_records`` records
and ``max_requests`` requests), concatenates their record tables, hands the
result to the next consumer once, and reports the outcome to each request;
the others wait for theirs. So a request is acknowledged only after its
records are where they were before (the exporter's persistent queue),
exactly as without merging.

Before it takes a group, the leader waits for the requests that are being
decoded at that moment (the receiver *announces* each request before its
decode: :meth:`Merger.announce`), up to ``linger`` seconds and while the group
has room. Nothing waits when nothing is on its way: a request that finds the
pipeline idle and no other request decoding is delivered at once, alone.
Without this, under load (decodes and deliveries taking turns on the GIL) a
group was what happened to arrive during one delivery: 5,600 records on
average in the gateway bench, against 65,536 allowed, and the stages after
the receiver pay per batch (an inventory snapshot's dictionary, a queue item,
one more dictionary for the exporter to unify): attribution and
classification cost 2.1 µs per record in batches of 2,000 against 0.9 in
batches of 65,536 (one thread, the bench's 50k-pod load).

A merged batch is named by the batch ids of its requests (one per line, see
:meth:`FlowBatch.batch_ids`). Backpressure or a failure refuses every request
of the group alike (each is retried by its agent); a queue that finds some of
the names already delivered (an agent re-sending after a gateway crash) says
so with :class:`MixedBatchError`, and the requests are then handed on one by
one, so the copies are dropped and the new ones kept.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyarrow as pa

from kubenetmon.errors import MixedBatchError
from kubenetmon.flows import BATCH_ID_SEPARATOR

__all__ = ["Merger"]


class _Request:
    __slots__ = ("batch_id", "done", "error", "table")

    def __init__(self, table: pa.RecordBatch, batch_id: str) -> None:
        self.table = table
        self.batch_id = batch_id
        self.done = False
        self.error: BaseException | None = None


class Merger:
    """Delivers record tables through ``deliver(table, batch_id)``, merging those that wait together."""

    def __init__(
        self, deliver: Callable[[pa.RecordBatch, str], None], max_records: int = 65_536, max_requests: int = 64,
        linger: float = 0.2,
    ) -> None:
        self._deliver = deliver
        self.max_records = max_records
        self.max_requests = max_requests
        self.linger = linger
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # followers wait here for their outcome
        self._arrivals = threading.Condition(lock)  # the leader waits here for the requests announced
        self._waiting: deque[_Request] = deque()
        self._waiting_records = 0
        self._announced = 0  # requests being decoded: announced, neither submitted nor withdrawn yet
        self._mine = threading.local()  # whether this thread's request is among them
        self._busy = False
        self.merged_requests = 0  # requests delivered as part of a group of several (for metrics and tests)
        self.groups = 0
        self.lingered = 0.0  # seconds leaders waited for announced requests, since start

    @contextmanager
    def announce(self) -> Iterator[None]:
        """Around decoding a request: a leader may wait for it; a request that never submits withdraws on exit."""
        with self._cond:
            self._announced += 1
        self._mine.announced = True
        try:
            yield
        finally:
            if getattr(self._mine, "announced", False):
                self._mine.announced = False
                with self._cond:
                    self._arrived()

    def _arrived(self) -> None:
        """(Lock held.) One announced request is no longer on its way."""
        self._announced -= 1
        if self._announced <= 0 or self._full():
            self._arrivals.notify()

    def _full(self) -> bool:
        return self._waiting_records >= self.max_records or len(self._waiting) >= self.max_requests

    def submit(self, table: pa.RecordBatch, batch_id: str = "") -> None:
        """Deliver ``table``; returns when it was, raises what delivering it raised."""
        request = _Request(table, batch_id)
        announced = getattr(self._mine, "announced", False)
        self._mine.announced = False
        with self._cond:
            self._waiting.append(request)
            self._waiting_records += table.num_rows
            if announced:
                self._arrived()
            elif self._full():
                self._arrivals.notify()
            while self._busy and not request.done:
                self._cond.wait()
            leader = not request.done
            if leader:
                self._busy = True
        if leader:
            try:
                while not request.done:  # deliver groups from the front until its own is done
                    with self._cond:
                        self._gather()
                        group = self._take()
                    self._run(group)
                    with self._cond:
                        self._cond.notify_all()  # the group's requests return
            finally:
                with self._cond:
                    self._busy = False  # a request still waiting becomes the next leader
                    self._cond.notify_all()
        if request.error is not None:
            raise request.error

    def _gather(self) -> None:
        """(Lock held, leader.) Wait for the requests being decoded, while the group has room, up to linger."""
        if self._announced <= 0 or self._full() or self.linger <= 0:
            return
        started = time.monotonic()
        deadline = started + self.linger
        while self._announced > 0 and not self._full():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._arrivals.wait(left)
        self.lingered += time.monotonic() - started

    def _take(self) -> list[_Request]:
        group = [self._waiting.popleft()]
        records = group[0].table.num_rows
        while self._waiting and len(group) < self.max_requests:
            n = self._waiting[0].table.num_rows
            if records + n > self.max_records:
                break
            group.append(self._waiting.popleft())
            records += n
        self._waiting_records -= records
        return group

    def _run(self, group: list[_Request]) -> None:
        """Deliver ``group``; every request ends done, with its error if any (never raises)."""
        if len(group) > 1:
            try:
                merged = pa.concat_batches([r.table for r in group])
            except (pa.ArrowException, ValueError):  # tables that do not concatenate: one by one
                merged = None
            if merged is not None:
                name = BATCH_ID_SEPARATOR.join(r.batch_id for r in group if r.batch_id)
                try:
                    self._deliver(merged, name)
                except MixedBatchError:
                    pass  # some were delivered before (a re-send after a crash): one by one below
                except Exception as exc:
                    for r in group:
                        r.error = exc
                        r.done = True
                    return
                else:
                    for r in group:
                        r.done = True
                    self.groups += 1
                    self.merged_requests += len(group)
                    return
        for r in group:
            try:
                self._deliver(r.table, r.batch_id)
            except Exception as exc:
                r.error = exc
            r.done = True
