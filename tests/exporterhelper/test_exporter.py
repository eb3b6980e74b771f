from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kubenetmon.component import Kind
from kubenetmon.errors import BackpressureError, PermanentError, RetryableError
from kubenetmon.exporterhelper import Block, ExporterHelperConfig, QueuedExporter
from kubenetmon.testing import StaticHost, check_lifecycle, create_settings
from tests.flowgen import batch

FAST_RETRY = {"initial_interval": 0.01, "max_interval": 0.02, "randomization_factor": 0, "max_elapsed_time": 0}


class ScriptedExporter(QueuedExporter):
    """Push fails with the scripted errors first, then succeeds."""

    def __init__(self, config: ExporterHelperConfig, errors: list[Exception] | None = None) -> None:
        self.registry = CollectorRegistry()
        super().__init__(create_settings(Kind.EXPORTER, "scripted", registry=self.registry), config)
        self.errors = list(errors or [])
        self.attempts: list[str] = []
        self.delivered: list[Block] = []
        self.gate = threading.Event()
        self.gate.set()

    def push(self, block: Block, timeout: float) -> None:
        self.gate.wait()
        self.attempts.append(block.id)
        if self.errors:
            raise self.errors.pop(0)
        self.delivered.append(block)

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(f"kubenetmon_{name}", {"component": "scripted", **labels})
        return value or 0.0


def config(**overrides: Any) -> ExporterHelperConfig:
    raw: dict[str, Any] = {"retry_on_failure": FAST_RETRY}
    raw.update(overrides)
    return ExporterHelperConfig.model_validate(raw)


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_retryable_failures_are_retried_with_the_same_block_id() -> None:
    exporter = ScriptedExporter(config(), [RetryableError("503"), RetryableError("timeout")])
    exporter.start(StaticHost())
    exporter.consume(batch(3))
    wait_until(lambda: exporter.delivered)
    exporter.shutdown()
    assert len(set(exporter.attempts)) == 1 and len(exporter.attempts) == 3
    assert exporter.metric("exporter_retries_total") == 2
    assert exporter.metric("exporter_sent_flows_total") == 3
    assert exporter.metric("exporter_send_failed_flows_total") == 6


def test_permanent_error_drops_and_counts() -> None:
    exporter = ScriptedExporter(config(), [PermanentError("bad schema")])
    exporter.start(StaticHost())
    exporter.consume(batch(2))
    exporter.shutdown()
    assert exporter.delivered == [] and len(exporter.attempts) == 1
    assert exporter.metric("exporter_dropped_flows_total", reason="permanent_error") == 2


def test_retries_give_up_after_max_elapsed_time_and_count_the_drop() -> None:
    retry = {**FAST_RETRY, "max_elapsed_time": 0.05}
    exporter = ScriptedExporter(config(retry_on_failure=retry), [RetryableError("down")] * 100)
    exporter.start(StaticHost())
    exporter.consume(batch(4))
    wait_until(lambda: exporter.metric("exporter_dropped_flows_total", reason="retries_exhausted") == 4)
    exporter.shutdown()
    assert exporter.delivered == []


def test_retry_after_from_the_peer_is_honoured() -> None:
    exporter = ScriptedExporter(config(), [RetryableError("slow down", retry_after=0.3)])
    exporter.start(StaticHost())
    started = time.monotonic()
    exporter.consume(batch(1))
    wait_until(lambda: exporter.delivered)
    exporter.shutdown()
    assert time.monotonic() - started >= 0.3


def test_full_queue_pushes_back_with_block_policy() -> None:
    exporter = ScriptedExporter(config(sending_queue={"capacity": 2, "block_timeout": 0.05}))
    exporter.gate.clear()  # the peer hangs: nothing leaves the queue
    exporter.start(StaticHost())
    exporter.consume(batch(1))
    exporter.consume(batch(1))
    with pytest.raises(BackpressureError):
        exporter.consume(batch(5))
    assert exporter.metric("exporter_enqueue_refused_flows_total") == 5
    exporter.gate.set()
    wait_until(lambda: len(exporter.delivered) == 2)
    exporter.consume(batch(5))  # room again: accepted
    exporter.shutdown()
    assert sum(len(b) for b in exporter.delivered) == 7


def test_full_queue_drops_and_counts_with_drop_policy() -> None:
    exporter = ScriptedExporter(config(sending_queue={"capacity": 1, "full_policy": "drop"}))
    exporter.gate.clear()
    exporter.start(StaticHost())
    exporter.consume(batch(1))
    exporter.consume(batch(3))  # no exception: dropped
    assert exporter.metric("exporter_dropped_flows_total", reason="queue_full") == 3
    exporter.gate.set()
    exporter.shutdown()
    assert sum(len(b) for b in exporter.delivered) == 1


def test_shutdown_flushes_everything_queued_and_waiting_in_a_block() -> None:
    exporter = ScriptedExporter(config(batch={"max_wait": 60, "max_flows": 1000}))
    exporter.start(StaticHost())
    for i in range(5):
        exporter.consume(batch(2, start=i * 10))
    exporter.shutdown(timeout=5)
    assert sum(len(b) for b in exporter.delivered) == 10
    with pytest.raises(BackpressureError):
        exporter.consume(batch(1))  # intake stopped


def test_memory_queue_counts_what_a_shutdown_deadline_loses() -> None:
    exporter = ScriptedExporter(config(), [RetryableError("down")] * 10_000)
    exporter.start(StaticHost())
    exporter.consume(batch(2))
    exporter.consume(batch(3))
    exporter.shutdown(timeout=0.2)
    assert exporter.metric("exporter_dropped_flows_total", reason="shutdown") == 5


def test_lifecycle_contract() -> None:
    check_lifecycle(ScriptedExporter(config()))
    ScriptedExporter(config()).shutdown()  # without start


CHILD = """
import sys, time
from kubenetmon.exporterhelper import ExporterHelperConfig, QueuedExporter
from kubenetmon.errors import RetryableError
from kubenetmon.component import Kind
from kubenetmon.testing import StaticHost, create_settings
from tests.flowgen import batch

class Down(QueuedExporter):
    def push(self, block, timeout):
        with open(sys.argv[2], "a") as fh:
            fh.write(block.id + "\\n")
        raise RetryableError("gateway down")

cfg = ExporterHelperConfig.model_validate({
    "sending_queue": {"storage": "persistent", "directory": sys.argv[1]},
    "batch": {"max_flows": 4, "max_wait": 0.01},
    "retry_on_failure": {"initial_interval": 0.01, "max_interval": 0.02, "max_elapsed_time": 0},
})
exporter = Down(create_settings(Kind.EXPORTER, "down"), cfg)
exporter.start(StaticHost())
for i in range(3):
    exporter.consume(batch(2, start=10 * i + 1))
print("ACCEPTED", flush=True)
time.sleep(60)
"""


def test_persistent_queue_delivers_once_after_kill_9(tmp_path: Path) -> None:
    attempts = tmp_path / "attempts.txt"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "queue"), str(attempts)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ACCEPTED"
        wait_until(lambda: attempts.exists() and attempts.read_text().count("\n") >= 2)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    tried_ids = set(attempts.read_text().split())

    exporter = ScriptedExporter(
        config(sending_queue={"storage": "persistent", "directory": str(tmp_path / "queue")}, batch={"max_flows": 100})
    )
    exporter.start(StaticHost())
    wait_until(lambda: sum(len(b) for b in exporter.delivered) >= 6)
    exporter.shutdown()
    delivered = sorted(f.local.address for b in exporter.delivered for f in b.flows())
    assert delivered == sorted(f"10.0.0.{i}" for i in (1, 2, 11, 12, 21, 22))  # each flow exactly once
    # The block being retried when the process died is re-sent under the same id.
    assert tried_ids & {b.id for b in exporter.delivered}


def test_without_a_queue_consume_returns_only_once_delivered_and_failures_push_back() -> None:
    # The stateless gateway (docs/scaling.md): its acknowledgement to the agent must mean "stored".
    exporter = ScriptedExporter(config(sending_queue={"enabled": False}),
                                errors=[RetryableError("ClickHouse is read-only"), PermanentError("bad schema")])
    exporter.start(StaticHost())
    try:
        with pytest.raises(BackpressureError, match="could not deliver the batch now: ClickHouse is read-only"):
            exporter.consume(batch(3))
        assert exporter.delivered == [] and exporter.metric("exporter_sent_flows_total") == 0
        exporter.consume(batch(3))  # a permanent error is dropped and counted, not pushed back forever
        assert exporter.metric("exporter_dropped_flows_total", reason="permanent_error") == 3
        caller = threading.get_ident()
        seen: list[int] = []
        exporter.gate.clear()
        threading.Timer(0.05, lambda: (seen.append(threading.get_ident()), exporter.gate.set())).start()
        exporter.consume(batch(2))  # returns after the push, in this thread
        assert len(exporter.delivered) == 1 and exporter.metric("exporter_sent_flows_total") == 2
        assert exporter.attempts[-1] == exporter.delivered[0].id and seen and seen[0] != caller
    finally:
        exporter.shutdown()
