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
