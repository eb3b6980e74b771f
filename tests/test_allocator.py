"""kubenetmon picks Arrow's allocator before pyarrow loads (the system one), and leaves an operator's choice alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "import kubenetmon, pyarrow; print(pyarrow.default_memory_pool().backend_name)"


@pytest.mark.parametrize(("setting", "expected"), [(None, "system"), ("jemalloc", "jemalloc")])
def test_arrow_allocator(setting: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if setting is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = setting
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_malloc_arenas_are_capped_unless_the_operator_chose() -> None:
    """The cap's effect on RSS is measured in bench/gateway_bench.py; here: it is applied, and only when unset."""
    code = "from kubenetmon._memory import limit_malloc_arenas; print(limit_malloc_arenas())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "True"  # glibc (Debian), as in the image
    env["MALLOC_ARENA_MAX"] = "4"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


ARENAS = """
import ctypes, sys, threading
import kubenetmon.cli  # what `kubenetmon run` imports: numpy and pyarrow start threads of their own
def work():
    blocks = [bytearray(100_000) for _ in range(20)]
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
sys.stdout.flush()
ctypes.CDLL(None).malloc_stats()  # glibc: one "Arena n:" section per arena, on stderr
"""


def test_one_malloc_arena_for_every_thread_after_import() -> None:
    """The cap binds threads that allocate after it: importing kubenetmon sets it before numpy and pyarrow
    start theirs (set in ``kubenetmon run`` instead, it held at 2: the bench's peak RSS showed it)."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    run = subprocess.run([sys.executable, "-c", ARENAS], env=env, capture_output=True, text=True, check=True)
    assert run.stderr.count("Arena ") == 1, run.stderr
    env["MALLOC_ARENA_MAX"] = "4"  # the operator's choice stands
    run = subprocess.run([sys.executable, "-c", ARENAS], env=env, capture_output=True, text=True, check=True)
    assert run.stderr.count("Arena ") > 1, run.stderr
