"""Fixtures for the cloud_prefix tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.processors.cloud_prefix.ranges import RangeServer, serving


@pytest.fixture
def range_server() -> Iterator[RangeServer]:
    with serving() as server:
        yield server
