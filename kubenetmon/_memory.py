"""Handing freed heap memory back to the kernel after a burst of large temporary arrays.

The agent's cycle and its exporter build arrays of tens of MB for a moment
(a dump's columns, the deltas' join, an OTAP batch's attribute table), on two
threads. glibc keeps what a thread freed in that thread's arena and, after the
first large array is freed, serves arrays up to that size from the arena
instead of mmap (its dynamic mmap threshold), so each thread's high-water mark
stays resident; Arrow's mimalloc pool keeps freed pages a while too. Measured
on the agent's full path at 300k entries (bench/conntrack_bench.py): the peak
RSS falls by ~50 MB when both are trimmed after each cycle and each sent block,
for a few ms of CPU per cycle.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

__all__ = ["LARGE_ROWS", "limit_malloc_arenas", "mmap_large_blocks", "release_free_memory"]

#: Rows (dump entries, records of a block) from which the temporaries are worth returning: below it they
#: are a few MB, and trimming them only makes the next cycle fault the same pages in again (measured in
#: bench/e2e_bench.py, 10k entries per node: the agent's CPU per 10k records was 63 ms trimming every
#: cycle and every block, 54 ms without).
LARGE_ROWS = 50_000


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # glibc only (not musl)
    except (AttributeError, OSError):
        return None
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Return the free pages of every malloc arena and of Arrow's default pool to the kernel."""
    import pyarrow as pa  # here: kubenetmon imports this module before pyarrow (see limit_malloc_arenas)

    if _TRIM is not None:
        _TRIM(0)
    pa.default_memory_pool().release_unused()


_M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = 1) -> bool:
    """Cap glibc's malloc arenas (unless the operator set ``MALLOC_ARENA_MAX``); call before threads start.

    glibc gives each thread that meets a locked arena one of its own, up to 8
    per core, and each keeps what was freed in it: the gateway builds batches
    on dozens of gRPC threads. Measured in bench/gateway_bench.py (10k pods,
    OTAP, 25 agents): peak RSS 530 → 422 MB with 2 arenas, CPU per record
    unchanged (6.6 → 6.0 µs, within noise). One arena (the heavy work takes
    turns anyway: ``kubenetmon.compute``), 50k pods over HTTP: peak RSS 514,
    521, 532 MB with 2 → 427, 426 with 1; CPU per 10k records 62–64 → 60 ms
    (a peak is the sum of each arena's own high-water mark: what one thread
    freed in its arena served nothing on another). True when the cap was set.

    ``import kubenetmon`` calls it first thing: a cap only binds threads that
    malloc for the first time after it, and importing numpy or pyarrow starts
    threads (OpenBLAS, jemalloc's) that took an arena of their own before
    ``kubenetmon run`` could set it — the cap then held at 2, whatever it said.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc only (not musl)
    except (AttributeError, OSError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def mmap_large_blocks(threshold: int = 4 << 20) -> bool:
    """Give every allocation of ``threshold`` bytes or more its own mmap (glibc; unless the operator set
    ``MALLOC_MMAP_THRESHOLD_``), so that freeing it hands it back to the kernel at once.

    glibc starts at 128 KiB but raises the threshold to the size of each large
    block freed (up to 32 MiB): after the first cycle of a big table, its arrays
    of a few MB come from the heap and their pages stay resident in between.
    Measured with bench/conntrack_bench.py's full path at 300k entries (OTAP),
    repeated runs: peak RSS 222-258 MB before, 214-216 MB with 4 MiB (215-219
    with 2 MiB); CPU of an all-active cycle +~5-10 % (the pages of each large
    array are faulted in anew); nothing changes at 10k entries, whose arrays
    stay below it. True when it was set.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc only (not musl)
    except (AttributeError, OSError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
