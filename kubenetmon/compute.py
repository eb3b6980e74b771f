"""One thread at a time in the pipeline's heavy Python stages (the *compute slot*).

A gateway runs its stages in several threads: gRPC threads decode requests,
a merge leader runs the processors and writes the queue, the exporter's
worker maps blocks to rows. Python runs one thread at a time anyway (the
GIL), but every numpy and Arrow call releases the GIL and takes it back, so
stages running "at once" hand the GIL over thousands of times per batch and
evict each other's data from the CPU caches. Measured in one process on the
gateway bench's batches: row mapping 0.67 µs per record alone, 0.88 with one
thread decoding OTAP beside it; decoding 2.5 alone, 3.1–3.5 beside the
mapping. Taking turns in chunks of milliseconds costs neither.

The slot is taken around leaf computations that never wait for anything
else while holding it (a decode, an attribution, a classification, a
batch's serialisation, a block's row mapping): never around a call into the
next consumer, a queue wait, an fsync or network I/O, so it cannot deadlock
the pipeline. It is reentrant. Plugins may take it around their own heavy
vector work (:func:`compute_slot`); they need not.
"""

from __future__ import annotations

import threading

__all__ = ["compute_slot"]

_SLOT = threading.RLock()


def compute_slot() -> threading.RLock:
    """The process's compute slot: ``with compute_slot(): ...`` around a heavy, non-blocking computation."""
    return _SLOT
