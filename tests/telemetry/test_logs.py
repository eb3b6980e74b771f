from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from kubenetmon.telemetry import configure_logging


def test_json_logs_carry_level_logger_message_and_extras(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        logging.getLogger("kubenetmon.test").info("dropped %d flows", 3, extra={"reason": "queue_full"})
        logging.getLogger("kubenetmon.test").debug("not shown at info")
        lines = capsys.readouterr().err.strip().splitlines()
    finally:
        configure_logging("warning", "console")
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "info" and entry["logger"] == "kubenetmon.test"
    assert entry["message"] == "dropped 3 flows" and entry["reason"] == "queue_full"
    assert entry["time"].endswith("Z")


def test_configure_logging_is_idempotent() -> None:
    configure_logging("info", "json")
    configure_logging("debug", "console")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_kubenetmon", False)]
    assert len(ours) == 1
    assert logging.getLogger().level == logging.DEBUG
    configure_logging("warning", "console")


def test_log_lines_follow_stderr_when_it_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    # A handler bound to the stderr of its creation wrote to a closed stream once a test runner
    # swapped it ("--- Logging error ---" in every later test's output).
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("info", "console")
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("kubenetmon.test.logs").warning("after the swap")
    assert "after the swap" in second.getvalue()
