"""Suite-wide fixtures and rules.

Kernel tests (marker ``kernel``) need root and network namespaces. They skip
with a reason elsewhere; under CI (``CI=true``) or with
``KUBENETMON_REQUIRE_KERNEL=1`` a skipped kernel test fails the run.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest


def _require_kernel() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get(
        "KUBENETMON_REQUIRE_KERNEL"
    ) == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("kernel") is not None and _require_kernel():
        report.outcome = "failed"
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"kernel test skipped under CI, which counts as a failure: {reason}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def unused_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_port()


@pytest.fixture
def another_port() -> int:
    return _free_port()


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Generator[None, None, None]:
    """Undo what a test's in-process ``kubenetmon`` command did to the root logger.

    ``main()`` installs the process's log handler on the root logger, as it should in a process of
    its own; left behind in the test process, its lines land on every later test's stderr (a test
    that checks the engine's raw stderr then sees our own formatted log lines).
    """
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers and getattr(handler, "_kubenetmon", False):
            root.removeHandler(handler)
    root.setLevel(level)
