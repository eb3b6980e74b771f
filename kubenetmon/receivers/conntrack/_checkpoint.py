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
would be counted twice. Writing every cycle is what makes it exact; its cost
is one ``marshal`` of the state (~125 bytes per entry, tens of milliseconds
for 300k entries) and one file write, which is why the file belongs on a
hostPath under ``/run`` (tmpfs): it must survive pod restarts, not reboots
(a reboot empties the conntrack table anyway).
"""

from __future__ import annotations

import contextlib
import marshal
import os
import zlib
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

from kubenetmon.flows import ConntrackRecord

__all__ = ["Checkpoint", "CheckpointError", "PendingBatch", "load", "mark_delivered", "save"]

_MAGIC = b"KNMCT1\n"
_VERSION = 2  # 2: keys hold the entry's start time
_OLD_KEYS = 1  # same layout, keys without the start time: batches kept, baselines dropped


class CheckpointError(ValueError):
    """The state file is unreadable; the message says what to do."""


@dataclass
class PendingBatch:
    """A batch written ahead of delivery, with the id it is (re)delivered under."""

    id: str
    records: list[ConntrackRecord]


@dataclass
class Checkpoint:
    node: str
    dump_ns: int
    state: dict[bytes, bytes]
    limbo: dict[bytes, tuple[bytes, int]]
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


def save(path: Path, checkpoint: Checkpoint) -> int:
    """Write the checkpoint atomically and reset the delivered-ids file; returns bytes written."""
    payload = marshal.dumps({
        "version": _VERSION,
        "node": checkpoint.node,
        "dump_ns": checkpoint.dump_ns,
        "state": checkpoint.state,
        "limbo": checkpoint.limbo,
        "batches": [(b.id, [astuple(r) for r in b.records]) for b in checkpoint.batches],
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        # Written in pieces: joining them would copy the (large) payload once more.
        f.write(_MAGIC + zlib.crc32(payload).to_bytes(4, "big"))
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The ids delivered so far belong to batches this file no longer lists.
    _delivered_path(path).unlink(missing_ok=True)
    _fsync_dir(path)
    return len(_MAGIC) + 4 + len(payload)


def mark_delivered(path: Path, batch_id: str) -> None:
    """Record that ``batch_id`` reached the consumer (appended and fsynced)."""
    with open(_delivered_path(path), "a", encoding="ascii") as f:
        f.write(batch_id + "\n")
        f.flush()
        os.fsync(f.fileno())


def load(path: Path) -> Checkpoint | None:
    """Read the checkpoint (None when there is none), dropping batches already delivered."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
        raise CheckpointError(f"{path} is not a conntrack checkpoint; move it away or fix checkpoint_path")
    payload = memoryview(data)[len(_MAGIC) + 4 :]
    if zlib.crc32(payload) != int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 4], "big"):
        raise CheckpointError(f"{path} is corrupt (checksum mismatch); delete it to start from a new baseline")
    raw: dict[str, Any] = marshal.loads(payload)
    if raw.get("version") not in (_VERSION, _OLD_KEYS):
        raise CheckpointError(f"{path} has version {raw.get('version')!r}, expected {_VERSION}; delete it")
    try:
        delivered = set(_delivered_path(path).read_text(encoding="ascii").split())
    except FileNotFoundError:
        delivered = set()
    batches = [
        PendingBatch(batch_id, [ConntrackRecord(*t) for t in records])
        for batch_id, records in raw["batches"]
        if batch_id not in delivered
    ]
    if raw["version"] == _OLD_KEYS:
        return Checkpoint(raw["node"], raw["dump_ns"], {}, {}, batches, stale_state=True)
    return Checkpoint(raw["node"], raw["dump_ns"], raw["state"], raw["limbo"], batches)
