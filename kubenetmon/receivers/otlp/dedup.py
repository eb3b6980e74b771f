"""Recently delivered batch ids, per node: a retried request is consumed once.

An agent re-sends a request when it did not see the acknowledgement (lost
connection, timeout, restart with a persistent queue). It re-sends it with
the same ``kubenetmon-batch-id``; remembering the ids this gateway already
handed to its consumer turns at-least-once delivery into exactly-once within
the window. The window is bounded in count per node and in time.

Ids are remembered only after the consumer accepted the batch. While a batch
is being consumed its id is *in flight*: a concurrent copy of the same
request is asked to retry later, so the two never race into the consumer.

With a ``journal`` file the window survives a restart (issue 16 item 6: a
batch acknowledged, the gateway killed, the batch re-sent was stored twice):
each delivered id is appended and fsync'd before :meth:`end` returns, hence
before the acknowledgement; the file is rewritten (temp file + rename) once
it holds twice the live ids. Lines are JSON ``[wall time, node, id]``; a torn
last line (killed mid-write) is ignored on load: its batch was never acked.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BatchIdWindow"]

_log = logging.getLogger(__name__)


class BatchIdWindow:
    """Bounded memory of delivered ``(node, batch id)`` pairs."""

    def __init__(self, max_ids_per_node: int, ttl: float, journal: str | Path | None = None) -> None:
        self.max_ids_per_node = max_ids_per_node
        self.ttl = ttl
        self._nodes: dict[str, OrderedDict[str, float]] = {}
        self._count = 0  # ids in _nodes, kept as they change: len() runs on every delivery
        self._inflight: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._next_sweep = time.monotonic() + ttl
        self._journal_path = Path(journal) if journal else None
        self._journal: int | None = None  # an O_APPEND file descriptor
        self._journal_lines = 0
        if self._journal_path is not None:
            self._load()
            self._rewrite()

    # --- the journal ----------------------------------------------------------------

    def _load(self) -> None:
        assert self._journal_path is not None
        try:
            text = self._journal_path.read_bytes()
        except FileNotFoundError:
            return
        now_wall, now = time.time(), time.monotonic()
        bad = 0
        for line in text.splitlines():
            try:
                wall, node, batch_id = json.loads(line)
                age = now_wall - float(wall)
            except (ValueError, TypeError):
                bad += 1  # a torn last write, or not our file
                continue
            if age <= self.ttl and isinstance(node, str) and isinstance(batch_id, str):
                self._remember(node, batch_id, now - max(age, 0.0))
        if bad:
            _log.warning("dedup journal %s: ignored %d unreadable line(s)", self._journal_path, bad)

    def _rewrite(self) -> None:
        """Replace the journal by the live ids (atomic: temp file, fsync, rename, fsync the directory)."""
        assert self._journal_path is not None
        path = self._journal_path
        path.parent.mkdir(parents=True, exist_ok=True)
        now_wall, now = time.time(), time.monotonic()
        lines = [
            json.dumps([round(now_wall - (now - at), 3), node, batch_id]) + "\n"
            for node, ids in self._nodes.items() for batch_id, at in ids.items()
        ]
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        if self._journal is not None:
            os.close(self._journal)
        self._journal = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._journal_lines = len(lines)

    def _append(self, entries: list[tuple[str, str]]) -> None:
        if self._journal is None:
            return
        wall = round(time.time(), 3)
        data = "".join(json.dumps([wall, node, batch_id]) + "\n" for node, batch_id in entries).encode()
        os.write(self._journal, data)
        os.fsync(self._journal)  # before the acknowledgement: a kill -9 after it must not forget the id
        self._journal_lines += len(entries)
        if self._journal_lines > 2 * max(len(self), 1024):
            self._rewrite()

    def close(self) -> None:
        """Close the journal (the ids stay in the file)."""
        with self._lock:
            if self._journal is not None:
                os.close(self._journal)
                self._journal = None

    def _remember(self, node: str, batch_id: str, at: float) -> None:
        ids = self._nodes.setdefault(node, OrderedDict())
        if batch_id not in ids:
            self._count += 1
        ids[batch_id] = at
        ids.move_to_end(batch_id)
        while len(ids) > self.max_ids_per_node:
            ids.popitem(last=False)
            self._count -= 1

    # --- the window -----------------------------------------------------------------

    def _fresh(self, node: str, batch_id: str, now: float) -> bool:
        ids = self._nodes.get(node)
        if ids is None:
            return False
        # Expire from the oldest end; ids are appended in delivery order.
        while ids:
            _oldest, at = next(iter(ids.items()))
            if now - at <= self.ttl:
                break
            ids.popitem(last=False)
            self._count -= 1
        if not ids:
            del self._nodes[node]
            return False
        return batch_id in ids

    def begin(self, nodes: Sequence[str], batch_id: str) -> str:
        """``duplicate``, ``in_flight`` or ``new`` (then the caller must call :meth:`end`)."""
        now = time.monotonic()
        with self._lock:
            if all(self._fresh(n, batch_id, now) for n in nodes):
                return "duplicate"
            keys = [(n, batch_id) for n in nodes]
            if any(k in self._inflight for k in keys):
                return "in_flight"
            self._inflight.update(keys)
            return "new"

    def end(self, nodes: Sequence[str], batch_id: str, delivered: bool) -> None:
        """Finish :meth:`begin`; remember the id when the batch was delivered."""
        now = time.monotonic()
        with self._lock:
            for n in nodes:
                self._inflight.discard((n, batch_id))
                if delivered:
                    self._remember(n, batch_id, now)
            if delivered:
                self._append([(n, batch_id) for n in nodes])
            if now >= self._next_sweep:
                # Nodes that stopped sending (scaled down, replaced) are only
                # expired when looked up: sweep them once per ttl.
                self._next_sweep = now + self.ttl
                for node in list(self._nodes):
                    self._fresh(node, "", now)

    def __len__(self) -> int:
        # Called under the lock by _append, so no locking of its own: an
        # approximate count outside the lock is all other callers need.
        return self._count
