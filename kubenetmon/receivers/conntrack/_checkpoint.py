"""The receiver's state file: exact restarts, also after ``kill -9``.

Every cycle, *before* delivering, the receiver writes (atomically: temp
file, fsync, rename) the new baselines together with every batch it is
about to deliver and each batch's id (write-ahead). After a batch is
accepted downstream, its id is appended to a small side file
(``<path>.delivered``). On start:

* baselines come from the file, so the first dump yields exact deltas;
* a batch whose id is not in the side file may or may not have reached the
  consumer before the crash: it is delivered again **with the same id**, and
  the OTLP exporter/gateway deduplicate by that id.

A checkpoint taken only periodically would be wrong after ``kill -9``: it
holds baselines older than the last delivered batch, so the deltas after it
would be counted twice. Writing every cycle is what makes it exact. The
state is a handful of arrays (:class:`._state.EntryState`), written as they
are in memory (no per-entry marshalling: ~105 bytes per entry) after a small
JSON header; each batch is the Arrow IPC stream of its records. The file
belongs on a hostPath under ``/run`` (tmpfs): it must survive pod restarts,
not reboots (a reboot empties the conntrack table anyway).

Layout: ``KNMCT3\\n``, CRC32 of the rest (4 bytes, big-endian), header
length (4 bytes), the JSON header (node, dump time, each array's name,
dtype and shape, the batch ids), the arrays' bytes, each batch's Arrow IPC
stream, and a trailer: the JSON list of the batches' sizes and its length
(4 bytes). Everything is streamed from memory into the file, CRC included.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from kubenetmon.flows import RECORD_SCHEMA, ConntrackRecord, FlowBatch
from kubenetmon.receivers.conntrack._state import EntryState

__all__ = ["Checkpoint", "CheckpointError", "PendingBatch", "load", "mark_delivered", "save"]

_MAGIC = b"KNMCT3\n"
_MARSHAL_MAGIC = b"KNMCT1\n"  # formats 1 and 2 (marshal of dicts): batches readable, baselines not
_VERSION = 3


class CheckpointError(ValueError):
    """The state file is unreadable; the message says what to do."""


@dataclass
class PendingBatch:
    """A batch written ahead of delivery, with the id it is (re)delivered under."""

    id: str
    records: pa.RecordBatch  # flows.RECORD_SCHEMA

    @property
    def num_records(self) -> int:
        return int(self.records.num_rows)


@dataclass
class Checkpoint:
    node: str
    dump_ns: int
    state: EntryState
    batches: list[PendingBatch] = field(default_factory=list)
    stale_state: bool = False  # written by an older version whose keys we cannot match: no baselines


def _delivered_path(path: Path) -> Path:
    return path.with_name(path.name + ".delivered")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _ChecksummedFile:
    """A binary file that keeps the CRC32 and size of what is written (Arrow writes through it)."""

    closed = False

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.crc = 0
        self.size = 0

    def write(self, data: Any) -> int:
        self.crc = zlib.crc32(data, self.crc)
        written = self._f.write(data)
        self.size += written
        return written

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.size

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        pass


def save(path: Path, checkpoint: Checkpoint) -> int:
    """Write the checkpoint atomically and reset the delivered-ids file; returns bytes written."""
    arrays = {name: np.ascontiguousarray(a) for name, a in checkpoint.state.to_arrays().items()}
    header = json.dumps({
        "version": _VERSION,
        "node": checkpoint.node,
        "dump_ns": checkpoint.dump_ns,
        "arrays": [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in arrays.items()],
        "batches": [b.id for b in checkpoint.batches],
    }).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_MAGIC + bytes(4))  # the CRC, written last
        out = _ChecksummedFile(f)
        out.write(len(header).to_bytes(4, "big") + header)
        # Straight from the arrays' and batches' memory: no copy of the state or of a batch.
        for a in arrays.values():
            out.write(a.reshape(-1).view(np.uint8).data)
        sizes = []
        for batch in checkpoint.batches:
            before = out.size
            with pa.ipc.new_stream(pa.PythonFile(out, mode="w"), RECORD_SCHEMA) as writer:
                writer.write_batch(batch.records)
            sizes.append(out.size - before)
        trailer = json.dumps(sizes).encode()
        out.write(trailer + len(trailer).to_bytes(4, "big"))
        f.seek(len(_MAGIC))
        f.write(out.crc.to_bytes(4, "big"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The ids delivered so far belong to batches this file no longer lists.
    _delivered_path(path).unlink(missing_ok=True)
    _fsync_dir(path)
    return len(_MAGIC) + 4 + out.size


def mark_delivered(path: Path, batch_id: str) -> None:
    """Record that ``batch_id`` reached the consumer (appended and fsynced)."""
    with open(_delivered_path(path), "a", encoding="ascii") as f:
        f.write(batch_id + "\n")
        f.flush()
        os.fsync(f.fileno())


def _delivered(path: Path) -> set[str]:
    try:
        return set(_delivered_path(path).read_text(encoding="ascii").split())
    except FileNotFoundError:
        return set()


def load(path: Path) -> Checkpoint | None:
    """Read the checkpoint (None when there is none), dropping batches already delivered."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if data.startswith(_MARSHAL_MAGIC):
        return _load_marshal(path, data)
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 8:
        raise CheckpointError(f"{path} is not a conntrack checkpoint; move it away or fix checkpoint_path")
    body = memoryview(data)[len(_MAGIC) + 4 :]
    if zlib.crc32(body) != int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 4], "big"):
        raise CheckpointError(f"{path} is corrupt (checksum mismatch); delete it to start from a new baseline")
    try:
        size = int.from_bytes(body[:4], "big")
        header: dict[str, Any] = json.loads(bytes(body[4 : 4 + size]))
        at = 4 + size
        arrays = {}
        for spec in header["arrays"]:
            dtype = np.dtype(spec["dtype"])
            count = int(np.prod(spec["shape"]))
            arrays[spec["name"]] = np.frombuffer(body, dtype, count=count, offset=at).reshape(spec["shape"]).copy()
            at += count * dtype.itemsize
        state = EntryState.from_arrays(arrays)
        trailer_size = int.from_bytes(body[-4:], "big")
        sizes = json.loads(bytes(body[-4 - trailer_size : -4]))
        delivered = _delivered(path)
        batches = []
        for batch_id, batch_size in zip(header["batches"], sizes, strict=True):
            blob = body[at : at + batch_size]
            at += batch_size
            if batch_id not in delivered:
                batches.append(PendingBatch(batch_id, _from_ipc(blob)))
    except (KeyError, ValueError, TypeError, pa.ArrowException) as exc:
        raise CheckpointError(f"{path} cannot be read ({exc}); delete it to start from a new baseline") from exc
    return Checkpoint(header["node"], header["dump_ns"], state, batches)


def _load_marshal(path: Path, data: bytes) -> Checkpoint:
    """Formats 1 and 2 (before the array state): their batches are re-sent, their baselines dropped
    (their keys cannot be matched to today's), so the first dump sets a new baseline."""
    payload = memoryview(data)[len(_MARSHAL_MAGIC) + 4 :]
    if zlib.crc32(payload) != int.from_bytes(data[len(_MARSHAL_MAGIC) : len(_MARSHAL_MAGIC) + 4], "big"):
        raise CheckpointError(f"{path} is corrupt (checksum mismatch); delete it to start from a new baseline")
    raw: dict[str, Any] = marshal.loads(payload)
    if raw.get("version") not in (1, 2):
        raise CheckpointError(f"{path} has version {raw.get('version')!r}, expected {_VERSION}; delete it")
    delivered = _delivered(path)
    batches = [
        PendingBatch(batch_id, _rows_to_table(ConntrackRecord(*t) for t in records))
        for batch_id, records in raw["batches"]
        if batch_id not in delivered
    ]
    return Checkpoint(raw["node"], raw["dump_ns"], EntryState.empty(), batches, stale_state=True)


def _from_ipc(blob: memoryview) -> pa.RecordBatch:
    reader = pa.ipc.open_stream(pa.py_buffer(bytes(blob)))
    parts = list(reader)
    table = parts[0] if len(parts) == 1 else pa.concat_batches(parts)
    return table.replace_schema_metadata(RECORD_SCHEMA.metadata)


def _rows_to_table(rows: Iterable[ConntrackRecord]) -> pa.RecordBatch:
    table = FlowBatch(list(rows)).record_table()
    return table if table.schema.equals(RECORD_SCHEMA) else table.cast(RECORD_SCHEMA)
