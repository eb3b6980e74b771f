"""The sending queue: bounded, in memory or persistent on disk, handing out blocks.

A *block* is what one send attempt carries: one or more queued batches.
Blocks have an id that stays the same across retries, and, with persistent
storage, across restarts: the block's manifest (its id and the batches in
it) is written to disk before its first attempt, so a block whose
acknowledgement was lost is re-sent after a crash with the same id and the
same content. Exporters pass :attr:`Block.key` to their peer as an
idempotency key (``insert_deduplication_token`` for ClickHouse,
``kubenetmon-batch-id`` for OTLP), which makes delivery exactly-once end to end.

Persistent layout (``directory``)::

    items/<seq>.batch     one accepted batch as Arrow IPC (FlowBatch.to_ipc: both
                          views, batch_id in the schema metadata), written atomically
    blocks/<id>.json      a block's manifest: the seqs it holds
    corrupt/              items that could not be read back (moved aside, logged),
                          including pickled items of versions before Arrow
    delivered.log         ids of named batches already handled: ``<unix time> <batch_id>``

Named batches (``FlowBatch.batch_id``) are deduplicated for ``dedup_window``
seconds: a producer that re-sends a batch after a crash (the conntrack
receiver replaying its checkpoint) finds it either still queued or in
``delivered.log``, and the copy is not queued again. Blocks hold several
batches, so the block's key alone could not catch a copy arriving in another
block. The id is logged (and fsynced) before the batch's files are deleted, so
a crash in between re-sends the old block under its old key (the peer
deduplicates) rather than forgetting the id.

A batch is durable when :meth:`SendingQueue.put` returns. Arrow IPC, not
pickle: it is the batch's own columnar form (no per-record objects to
serialise, DESIGN §4.2), and reading it back cannot run code.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import cast

import pyarrow as pa

from kubenetmon.compute import compute_slot
from kubenetmon.errors import MixedBatchError
from kubenetmon.flows import Flow, FlowBatch, split_batch_ids

__all__ = ["Block", "PutResult", "SendingQueue", "UnstorableBatchError"]

log = logging.getLogger(__name__)
_ITEM_SUFFIX = ".batch"
_PICKLE = b"\x80"  # how a pickle (protocol 2+) starts; an Arrow IPC stream starts with 0xFFFFFFFF


_MAX_REMEMBERED = 100_000  # delivered batch ids kept at most (oldest forgotten first)
_COMPACT_SLACK = 1000  # delivered.log is rewritten once it holds this many more lines than twice the ids kept


class PutResult(IntEnum):
    """What :meth:`SendingQueue.put` did; false only when the batch was not taken (full or closed)."""

    FULL = 0
    QUEUED = 1
    DUPLICATE = 2  # a named batch already queued or delivered: not queued again


class UnstorableBatchError(ValueError):
    """A batch whose rows do not fit the batch contract, so it cannot be written to the persistent queue."""


@dataclass
class Block:
    """Batches sent together; ``id`` is stable across retries and restarts."""

    id: str
    batches: list[FlowBatch]
    seqs: list[int] = field(default_factory=list)
    recovered: bool = False  # read back from disk after a restart

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches)

    @property
    def key(self) -> str:
        """The idempotency key to give the peer.

        A block that is exactly one batch named by its producer
        (``FlowBatch.batch_id``) uses that name: a producer that re-sends a batch
        after a crash (the conntrack receiver's checkpoint) reuses it, so the copy
        already queued here and the re-sent one reach the peer under one key and
        are counted once. Any other block uses its own ``id``.
        """
        if len(self.batches) == 1 and len(self.batches[0].batch_ids()) == 1:
            return self.batches[0].batch_id
        return self.id

    def flows(self) -> list[Flow]:
        """Every flow as a row (the row-wise helper: for tests and simple exporters)."""
        return [f for b in self.batches for f in b.flows]

    def merged(self) -> FlowBatch:
        """One batch holding every batch's records and flows.

        Concatenated as Arrow (no rows made); only when some batch's rows do
        not fit the batch contract is the merge made of rows.
        """
        if len(self.batches) == 1:
            return self.batches[0]
        try:
            return FlowBatch(
                records=pa.concat_batches([b.record_table() for b in self.batches]),
                flows=pa.concat_batches([b.flow_table() for b in self.batches]),
            )
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass  # rows that do not fit the contract: merge them as rows, the exporter deals with them
        records = [r for b in self.batches for r in b.records]
        flows = [f for b in self.batches for f in b.flows]
        return FlowBatch(records=records, flows=flows)


#: Rows (records + flows) of queued batches a persistent queue also keeps in memory; beyond, a queued
#: batch is only in its file. A gateway whose ClickHouse is away queues for as long as its disk allows
#: (``capacity`` batches of up to ``merge.max_records`` records each): held in memory too, that backlog
#: would end in the OOM killer. Within the budget (the normal case: a block's worth) nothing is read back.
IN_MEMORY_ROWS = 200_000


class _OnDisk:
    """A queued batch whose content is only in its item file (read back when a block takes it)."""

    __slots__ = ("batch_id", "nbytes", "size")

    def __init__(self, batch: FlowBatch, nbytes: int) -> None:
        self.batch_id = batch.batch_id
        self.size = len(batch)
        self.nbytes = nbytes  # of its item file, as counted in bytes_on_disk

    def __len__(self) -> int:
        return self.size

    def batch_ids(self) -> list[str]:
        return split_batch_ids(self.batch_id)


_Queued = FlowBatch | _OnDisk


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_batch(path: Path, batch: FlowBatch) -> int:
    """``batch`` as Arrow IPC (FlowBatch.to_ipc's bytes) in ``path``, fsynced; its size."""
    with open(path, "wb") as fh:
        with compute_slot():  # serialising; not the fsync, which waits for the disk
            batch.write_ipc(fh)
        fh.flush()
        os.fsync(fh.fileno())
        return fh.tell()


class SendingQueue:
    """Bounded FIFO of batches; ``capacity`` counts queued and in-flight batches."""

    def __init__(
        self, capacity: int, directory: str | Path | None = None, dedup_window: float = 0.0,
        memory_rows: int = IN_MEMORY_ROWS,
    ) -> None:
        self.capacity = capacity
        self.memory_rows = memory_rows  # persistent storage: rows of queued batches also kept in memory
        self._rows_in_memory = 0
        self._dir = Path(directory) if directory else None
        self._dedup_window = dedup_window
        self._held: dict[str, int] = {}  # ids of named batches queued or in flight → how many
        self._delivered: OrderedDict[str, float] = OrderedDict()  # id → wall time it was handled
        self._log_lines = 0  # lines in delivered.log
        self._cond = threading.Condition()
        self._pending: deque[tuple[int, float, _Queued]] = deque()  # (seq, enqueued monotonic, batch)
        self._recovered: deque[Block] = deque()
        self._inflight: dict[str, Block] = {}
        self._seq = 0
        self._bytes = 0
        self._closed = False
        if self._dir is not None:
            self._open_persistent(self._dir)
            if dedup_window > 0:
                self._load_delivered(self._dir / "delivered.log")
        for batch in self._all_batches():
            self._hold(batch)

    # --- named batches ---------------------------------------------------------------

    def _all_batches(self) -> list[_Queued]:
        blocks = (*self._recovered, *self._inflight.values())
        return [b for _, _, b in self._pending] + [b for blk in blocks for b in blk.batches]

    def _hold(self, batch: _Queued) -> None:
        for batch_id in batch.batch_ids():
            self._held[batch_id] = self._held.get(batch_id, 0) + 1

    def _seen_id(self, batch_id: str, now: float) -> bool:
        if batch_id in self._held:
            return True
        at = self._delivered.get(batch_id)
        return at is not None and now - at <= self._dedup_window

    def _seen(self, batch: FlowBatch) -> bool:
        """True when every batch ``batch`` holds was queued or handled already.

        A merged batch of which only some were raises :class:`MixedBatchError`
        (its producer hands the parts on one by one).
        """
        ids = batch.batch_ids()
        if not ids or self._dedup_window <= 0:
            return False
        now = time.time()
        seen = [i for i in ids if self._seen_id(i, now)]
        if seen and len(seen) < len(ids):
            raise MixedBatchError(
                f"{len(seen)} of the {len(ids)} batches merged here were already queued or delivered", seen
            )
        return bool(seen)

    def _load_delivered(self, path: Path) -> None:
        now = time.time()
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            return
        if text and not text.endswith("\n"):  # a crash mid-append: end the torn line before appending more
            with open(path, "a") as fh:
                fh.write("\n")
        lines = text.splitlines()
        self._log_lines = len(lines)
        for line in lines:
            at, _, batch_id = line.partition(" ")
            try:
                when = float(at)
            except ValueError:
                continue  # a torn last line after a crash
            if batch_id and now - when <= self._dedup_window:
                self._delivered[batch_id] = when
                self._delivered.move_to_end(batch_id)
        while len(self._delivered) > _MAX_REMEMBERED:
            self._delivered.popitem(last=False)
        if len(lines) > 2 * len(self._delivered) + _COMPACT_SLACK:  # compact what expired
            _write_atomic(path, "".join(f"{t:.3f} {i}\n" for i, t in self._delivered.items()).encode())
            self._log_lines = len(self._delivered)

    def _remember_delivered(self, ids: list[str]) -> None:
        now = time.time()
        for batch_id in ids:
            self._delivered[batch_id] = now
            self._delivered.move_to_end(batch_id)
        while self._delivered and (
            len(self._delivered) > _MAX_REMEMBERED or now - next(iter(self._delivered.values())) > self._dedup_window
        ):
            self._delivered.popitem(last=False)
        if self._dir is None:
            return
        path = self._dir / "delivered.log"
        self._log_lines += len(ids)
        if self._log_lines > 2 * len(self._delivered) + _COMPACT_SLACK:
            # Rewritten (atomically) with what is still remembered, so the log stays bounded.
            _write_atomic(path, "".join(f"{t:.3f} {i}\n" for i, t in self._delivered.items()).encode())
            self._log_lines = len(self._delivered)
            return
        with open(path, "a") as fh:
            fh.write("".join(f"{now:.3f} {i}\n" for i in ids))
            fh.flush()
            os.fsync(fh.fileno())

    # --- persistence -----------------------------------------------------------------

    def _open_persistent(self, directory: Path) -> None:
        items, blocks = directory / "items", directory / "blocks"
        items.mkdir(parents=True, exist_ok=True)
        blocks.mkdir(parents=True, exist_ok=True)
        for tmp in [*items.glob("*.tmp"), *blocks.glob("*.tmp")]:
            tmp.unlink()  # an interrupted write: the batch was never acknowledged
        stored: dict[int, Path] = {int(p.stem): p for p in items.glob(f"*{_ITEM_SUFFIX}")}
        self._seq = max(stored, default=0)
        loaded: dict[int, _Queued] = {
            seq: _OnDisk(batch, path.stat().st_size) for seq, path in stored.items()
            if (batch := self._read(path)) is not None
        }
        claimed: set[int] = set()
        for manifest in sorted(blocks.glob("*.json"), key=lambda p: p.stat().st_mtime_ns):
            seqs = [int(s) for s in json.loads(manifest.read_text())["seqs"]]
            present = [s for s in seqs if s in loaded]
            if not present:
                manifest.unlink()
                continue
            batches = cast(list[FlowBatch], [loaded[s] for s in present])  # stubs until take_block loads them
            self._recovered.append(Block(manifest.stem, batches, present, recovered=True))
            claimed.update(present)
        for seq in sorted(loaded):
            if seq not in claimed:
                self._pending.append((seq, 0.0, loaded[seq]))

    def _read(self, path: Path) -> FlowBatch | None:
        """The batch in ``path``; None (the file moved to ``corrupt/``, logged) when it cannot be read."""
        data = path.read_bytes()
        try:
            if data.startswith(_PICKLE):
                raise ValueError(
                    "written by a kubenetmon before the Arrow queue (pickle), which is never loaded; "
                    "deliver it with that version, or delete it"
                )
            batch = FlowBatch.from_ipc(data)
        except (pa.ArrowException, TypeError, ValueError, UnicodeDecodeError) as exc:
            aside = path.parent.parent / "corrupt"
            aside.mkdir(exist_ok=True)
            os.replace(path, aside / path.name)
            log.error("persistent queue item %s cannot be read (%s): moved to %s, not sent", path, exc, aside)
            return None
        self._bytes += len(data)
        return batch

    def _item_path(self, seq: int) -> Path:
        assert self._dir is not None
        return self._dir / "items" / f"{seq:020d}{_ITEM_SUFFIX}"

    # --- producer side ---------------------------------------------------------------

    def size(self) -> int:
        with self._cond:
            return self._size()

    def _size(self) -> int:
        return len(self._pending) + sum(len(b.batches) for b in (*self._recovered, *self._inflight.values()))

    @property
    def bytes_on_disk(self) -> int:
        return self._bytes

    def put(self, batch: FlowBatch, timeout: float = 0.0) -> PutResult:
        """Queue ``batch``; FULL (false) when still full after ``timeout`` seconds or closed.

        DUPLICATE: a named batch this queue already holds or handled within
        ``dedup_window`` (not queued again). Persistent storage raises
        :class:`UnstorableBatchError` for a batch whose rows do not fit the
        batch contract (nothing is queued then).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._seen(batch):
                return PutResult.DUPLICATE
        tmp: Path | None = None
        if self._dir is not None:
            # Serialised and written outside the lock, straight to a temporary file (a batch of
            # 300k records is ~40 MB of IPC: never held in memory), fsynced; under the lock it only
            # gets its seq's name, so producers encode in parallel and seq order is still disk order.
            try:
                batch.record_table(), batch.flow_table()
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                raise UnstorableBatchError(f"the batch does not fit the batch contract: {exc}") from exc
            tmp = self._dir / "items" / f"{uuid.uuid4().hex}.tmp"
        try:
            size = _write_batch(tmp, batch) if tmp is not None else 0
            with self._cond:
                while self._size() >= self.capacity and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return PutResult.FULL
                    self._cond.wait(remaining)
                if self._closed:
                    return PutResult.FULL
                if self._seen(batch):  # a copy arrived while this one waited or serialised
                    return PutResult.DUPLICATE
                self._hold(batch)
                self._seq += 1
                seq = self._seq
                if tmp is not None:
                    # Named under the lock so that seq order is disk order; the fsyncs are the
                    # price of "accepted means durable".
                    path = self._item_path(seq)
                    os.replace(tmp, path)
                    tmp = None
                    _fsync_dir(path.parent)
                    self._bytes += size
                queued: _Queued = batch
                if self._dir is not None:
                    # Within the budget the batch stays in memory too (no read-back when it is sent);
                    # beyond it, only its file holds it: a backlog grows the disk, not the process.
                    if self._rows_in_memory + len(batch) <= self.memory_rows:
                        self._rows_in_memory += len(batch)
                    else:
                        queued = _OnDisk(batch, size)
                self._pending.append((seq, time.monotonic(), queued))
                self._cond.notify_all()
                return PutResult.QUEUED
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    # --- consumer side ---------------------------------------------------------------

    def take_block(
        self, max_flows: int, max_wait: float, align: bool, drain: threading.Event
    ) -> Block | None:
        """Wait for and return the next block; None when ``drain`` is set and nothing is left.

        Without ``drain``, returns None only after waking up empty (the caller loops).
        """
        with self._cond:
            recovered = self._recovered.popleft() if self._recovered else None
            if recovered is not None:
                self._inflight[recovered.id] = recovered
        if recovered is not None:
            self._load(recovered)
            return recovered
        with self._cond:
            while not self._pending:
                if drain.is_set():
                    return None
                self._cond.wait(0.2)
                if not self._pending and not drain.is_set():
                    return None
            first_enqueued = self._pending[0][1]
            deadline = first_enqueued + max_wait
            if align and max_wait > 0:
                now_wall, now_mono = time.time(), time.monotonic()
                enq_wall = now_wall - (now_mono - first_enqueued)
                deadline = now_mono + (((enq_wall // max_wait) + 1) * max_wait - now_wall)
            taken: list[tuple[int, float, _Queued]] = []
            flows = 0
            while True:
                while self._pending and flows < max_flows:
                    item = self._pending.popleft()
                    taken.append(item)
                    flows += len(item[2])
                    if self._dir is not None and not isinstance(item[2], _OnDisk):
                        self._rows_in_memory -= len(item[2])
                    if max_wait == 0:
                        break
                if max_wait == 0 or flows >= max_flows or drain.is_set():
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.2))
            # Persistent items are _OnDisk stubs until _load reads them, before the block leaves the queue.
            block = Block(uuid.uuid4().hex, cast(list[FlowBatch], [t[2] for t in taken]), [t[0] for t in taken])
            self._inflight[block.id] = block
        self._load(block)
        if self._dir is not None:
            _write_atomic(self._dir / "blocks" / f"{block.id}.json", json.dumps({"seqs": block.seqs}).encode())
        return block

    def _load(self, block: Block) -> None:
        """Read ``block``'s batches back from their item files (outside the lock: only this worker has it).

        An item that cannot be read any more is moved aside and logged (as at
        start-up) and leaves the block.
        """
        if not any(isinstance(b, _OnDisk) for b in cast(list[_Queued], block.batches)):
            return
        kept: list[tuple[int, FlowBatch]] = []
        for seq, queued in zip(block.seqs, cast(list[_Queued], block.batches), strict=True):
            if not isinstance(queued, _OnDisk):
                kept.append((seq, queued))
                continue
            self._bytes -= queued.nbytes  # counted when queued; _read counts the file again if it reads it
            batch = self._read(self._item_path(seq))
            if batch is not None:
                kept.append((seq, batch))
        block.seqs = [seq for seq, _ in kept]
        block.batches = [batch for _, batch in kept]

    def ack(self, block: Block) -> None:
        """The block was delivered or given up on: forget it (and delete it from disk).

        Its named batches are remembered first (see the module doc).
        """
        named = [i for b in block.batches for i in b.batch_ids()]
        if named and self._dedup_window > 0:
            with self._cond:
                self._remember_delivered(named)
        if self._dir is not None:
            for seq in block.seqs:
                path = self._item_path(seq)
                try:
                    self._bytes -= path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    pass
            (self._dir / "blocks" / f"{block.id}.json").unlink(missing_ok=True)
        with self._cond:
            self._inflight.pop(block.id, None)
            for batch_id in named:
                left = self._held.get(batch_id, 0) - 1
                if left > 0:
                    self._held[batch_id] = left
                else:
                    self._held.pop(batch_id, None)
            self._cond.notify_all()

    def release(self, block: Block) -> None:
        """Stop sending ``block`` without forgetting it.

        Persistent storage keeps it on disk for the next start; memory storage
        keeps it for :meth:`close` to report as lost.
        """
        with self._cond:
            self._inflight.pop(block.id, None)
            self._recovered.appendleft(block)
            self._cond.notify_all()

    def close(self) -> list[FlowBatch]:
        """Refuse new batches; return what memory-only storage would lose."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if self._dir is not None:
                return []
            left = [cast(FlowBatch, b) for _, _, b in self._pending]  # memory storage: batches, not stubs
            left += [b for blk in (*self._recovered, *self._inflight.values()) for b in blk.batches]
            return left
