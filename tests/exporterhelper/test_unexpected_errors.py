"""An unexpected exception from an exporter's push is never retried for the whole retry window (issue 16.2)."""

from __future__ import annotations

import logging

import pytest

from kubenetmon.errors import RetryableError
from kubenetmon.testing import StaticHost
from tests.exporterhelper.test_exporter import ScriptedExporter, config, wait_until
from tests.flowgen import batch


def test_an_unexpected_error_is_dropped_after_three_attempts_even_when_retrying_forever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # max_elapsed_time 0 (config()'s FAST_RETRY) retries retryable errors forever.
    exporter = ScriptedExporter(config(), [AttributeError("'int' object has no attribute 'encode'")] * 100)
    exporter.start(StaticHost())
    try:
        exporter.consume(batch(4))
        wait_until(lambda: exporter.metric("exporter_dropped_flows_total", reason="unexpected_error") == 4)
    finally:
        exporter.shutdown()
    assert len(exporter.attempts) == 3
    assert not exporter.delivered
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and "unexpected error" in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback, for the bug report


def test_an_unexpected_error_that_goes_away_delivers_the_block() -> None:
    exporter = ScriptedExporter(config(), [KeyError("flaky"), RetryableError("down"), RetryableError("down")])
    exporter.start(StaticHost())
    try:
        exporter.consume(batch(2))
        wait_until(lambda: len(exporter.delivered) == 1)
    finally:
        exporter.shutdown()
    assert exporter.metric("exporter_dropped_flows_total", reason="unexpected_error") == 0
