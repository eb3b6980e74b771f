"""Recently delivered batch ids, per node: a retried request is consumed once.

An agent re-sends a request when it did not see the acknowledgement (lost
connection, timeout, restart with a persistent queue). It re-sends it with
the same ``kubenetmon-batch-id``; remembering the ids this gateway already
handed to its consumer turns at-least-once delivery into exactly-once within
the window. The window is bounded in count per node and in time.

Ids are remembered only after the consumer accepted the batch. While a batch
is being consumed its id is *in flight*: a concurrent copy of the same
request is asked to retry later, so the two never race into the consumer.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["BatchIdWindow"]


class BatchIdWindow:
    """Bounded memory of delivered ``(node, batch id)`` pairs."""

    def __init__(self, max_ids_per_node: int, ttl: float) -> None:
        self.max_ids_per_node = max_ids_per_node
        self.ttl = ttl
        self._nodes: dict[str, OrderedDict[str, float]] = {}
        self._inflight: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._next_sweep = time.monotonic() + ttl

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
                if not delivered:
                    continue
                ids = self._nodes.setdefault(n, OrderedDict())
                ids[batch_id] = now
                ids.move_to_end(batch_id)
                while len(ids) > self.max_ids_per_node:
                    ids.popitem(last=False)
            if now >= self._next_sweep:
                # Nodes that stopped sending (scaled down, replaced) are only
                # expired when looked up: sweep them once per ttl.
                self._next_sweep = now + self.ttl
                for node in list(self._nodes):
                    self._fresh(node, "", now)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(ids) for ids in self._nodes.values())
