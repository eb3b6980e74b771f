"""Process-wide allocator choices, made when kubenetmon is first imported, before numpy and pyarrow load.

* Arrow's allocator: pyarrow reads ``ARROW_DEFAULT_MEMORY_POOL`` once, when
  first imported (an operator's own setting wins). Its default, mimalloc,
  keeps a heap per thread: here batches are built on the gRPC threads and
  freed on the exporter's, and the gateway bench (10k pods, OTAP, 25 agents)
  measured 11.7 µs CPU per record and 908 MB peak with it against 6.6 µs and
  530 MB with the system allocator (jemalloc: 7.6 µs, 559 MB).
  docs/benchmarks.md, gateway section.
* glibc's malloc arenas: one (an operator's ``MALLOC_ARENA_MAX`` wins). The cap
  binds only threads that first allocate after it, and importing numpy or
  pyarrow starts threads: see :func:`kubenetmon._memory.limit_malloc_arenas`.
"""

import os

from kubenetmon._memory import limit_malloc_arenas

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
limit_malloc_arenas()
