"""Fixtures of the end-to-end tests: a mini-cluster of namespaces, the public peer, its ranges file.

Every test here needs root (network namespaces, real conntrack); they skip
with that reason elsewhere and fail under CI (see tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kubenetmon.demo.minicluster import MiniCluster, default_topology
from tests.e2e.harness import PREFIX, PUBLIC_ADDRESSES, require_root


@pytest.fixture(scope="module")
def cluster() -> Iterator[MiniCluster]:
    """One mini-cluster per test module (faults that break it get their own)."""
    require_root()
    with MiniCluster(default_topology(PUBLIC_ADDRESSES), PREFIX) as mc:
        yield mc
