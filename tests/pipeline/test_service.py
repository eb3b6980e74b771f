from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kubenetmon.config import validate
from kubenetmon.errors import BackpressureError, ComponentStartError
from kubenetmon.pipeline import Service
from kubenetmon.plugins import build_plugin_manager, load_components
from tests.flowgen import batch
from tests.pipeline.recording import RecordingPlugin


def make_service(raw: dict[str, Any], plugin: RecordingPlugin) -> Service:
    registry = load_components(build_plugin_manager(load_entry_points=False, extra_plugins=[plugin]))
    return Service(validate(raw, registry), registry, CollectorRegistry())


def two_pipelines() -> dict[str, Any]:
    return {
        "receivers": {"replay/a": {}, "replay/b": {}},
        "processors": {"tag/x": {"flag": "x"}, "tag/y": {"flag": "y"}},
        "exporters": {"sink/shared": {}, "sink/only_b": {}},
        "service": {
            "pipelines": {
                "flows": {"receivers": ["replay/a"], "processors": ["tag/x"], "exporters": ["sink/shared"]},
                "flows/b": {
                    "receivers": ["replay/a", "replay/b"],
                    "processors": ["tag/y", "tag/x"],
                    "exporters": ["sink/shared", "sink/only_b"],
                },
            },
            "telemetry": {"metrics": {"address": ""}},
        },
    }


def test_shared_receiver_fans_out_to_each_pipeline_with_its_own_copy() -> None:
    plugin = RecordingPlugin()
    service = make_service(two_pipelines(), plugin)
    service.start()
    try:
        plugin.receivers["replay/a"].emit(batch(2))
        plugin.receivers["replay/b"].emit(batch(1, start=10))
    finally:
        service.shutdown()
    shared = plugin.sinks["sink/shared"].batches
    only_b = plugin.sinks["sink/only_b"].batches
    # replay/a feeds both pipelines; replay/b only flows/b, whose exporters are both sinks.
    assert len(shared) == 3 and len(only_b) == 2
    flags = sorted(tuple(sorted(b.flows[0].connection_flags)) for b in shared)
    assert flags == [("x",), ("x", "y"), ("x", "y")]
    # Each pipeline got its own copy: changing one branch's flows does not touch another's.
    assert len({id(b.flows[0]) for b in shared + only_b}) == len(shared) + len(only_b) - 2
    # The exporter fan-out hands the same batch object to the two exporters of one pipeline.


def test_components_start_consumers_first_and_stop_in_reverse() -> None:
    plugin = RecordingPlugin()
    service = make_service(two_pipelines(), plugin)
    service.start()
    service.shutdown()
    service.shutdown()  # idempotent
    starts = [e.split()[1] for e in plugin.events if e.startswith("start")]
    stops = [e.split()[1] for e in plugin.events if e.startswith("shutdown")]
    assert starts[:2] == ["sink/shared", "sink/only_b"]
    assert starts[-2:] == ["replay/a", "replay/b"]
    assert set(starts[2:-2]) == {"tag/x", "tag/y"} and len(starts) == 7  # processors are per pipeline
    assert stops == list(reversed(starts))


def test_failed_start_names_the_component_and_stops_what_started() -> None:
    plugin = RecordingPlugin()
    raw = two_pipelines()
    raw["receivers"]["replay/b"] = {"fail_start": True}
    service = make_service(raw, plugin)
    with pytest.raises(ComponentStartError) as info:
        service.start()
    assert str(info.value) == 'failed to start receiver "replay/b": port already in use'
    started = [e.split()[1] for e in plugin.events if e.startswith("start")]
    stopped = [e.split()[1] for e in plugin.events if e.startswith("shutdown")]
    assert stopped == list(reversed(started))


def test_backpressure_reaches_the_receiver_when_every_exporter_refuses() -> None:
    plugin = RecordingPlugin()
    raw = two_pipelines()
    raw["exporters"]["sink/shared"] = {"refuse": True}
    raw["service"]["pipelines"] = {
        "flows": {"receivers": ["replay/a"], "processors": [], "exporters": ["sink/shared"]}
    }
    service = make_service(raw, plugin)
    service.start()
    try:
        with pytest.raises(BackpressureError):
            plugin.receivers["replay/a"].emit(batch(3))
        refused = service.metrics_registry.get_sample_value(
            "kubenetmon_receiver_refused_flows_total", {"component": "replay/a"}
        )
        assert refused == 3
    finally:
        service.shutdown()


def test_partial_refusal_is_not_duplicated_and_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = RecordingPlugin()
    raw = two_pipelines()
    raw["exporters"]["sink/only_b"] = {"refuse": True}
    raw["service"]["pipelines"] = {
        "flows": {"receivers": ["replay/a"], "processors": [], "exporters": ["sink/shared", "sink/only_b"]}
    }
    service = make_service(raw, plugin)
    service.start()
    try:
        from kubenetmon.pipeline import consumers

        class FakeClock:  # the fan-out's retry waits pass instantly
            now = 0.0

            def monotonic(self) -> float:
                return self.now

            def sleep(self, seconds: float) -> None:
                self.now += seconds

        monkeypatch.setattr(consumers, "time", FakeClock())
        plugin.receivers["replay/a"].emit(batch(4))  # no exception: the shared sink took it
        assert len(plugin.sinks["sink/shared"].batches) == 1
        dropped = service.metrics_registry.get_sample_value(
            "kubenetmon_fanout_dropped_flows_total", {"component": "fanout@flows"}
        )
        assert dropped == 4
    finally:
        service.shutdown()


def get(url: str) -> tuple[int, dict[str, Any] | str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as err:
        body, status = err.read().decode(), err.code
    try:
        return status, json.loads(body)
    except json.JSONDecodeError:
        return status, body


def test_metrics_live_and_ready_over_http(unused_port: int, another_port: int) -> None:
    plugin = RecordingPlugin()
    raw = two_pipelines()
    raw["extensions"] = {"health_check": {"endpoint": f"127.0.0.1:{another_port}"}}
    raw["service"]["extensions"] = ["health_check"]
    raw["service"]["telemetry"]["metrics"]["address"] = f"127.0.0.1:{unused_port}"
    service = make_service(raw, plugin)
    health = f"http://127.0.0.1:{another_port}"
    service.start()
    try:
        assert get(health + "/live")[0] == 200
        status, body = get(health + "/ready")
        assert status == 200 and isinstance(body, dict) and body["status"] == "ok"
        plugin.receivers["replay/a"].emit(batch(5))
        status, text = get(f"http://127.0.0.1:{unused_port}/metrics")
        assert status == 200 and isinstance(text, str)
        assert 'kubenetmon_receiver_accepted_flows_total{component="replay/a"} 5.0' in text
        assert 'kubenetmon_processor_incoming_flows_total{component="tag/x@flows"} 5.0' in text

        # A component reporting a dead worker makes /live fail and /ready too.
        sink = plugin.sinks["sink/shared"]
        sink.health = lambda: "a sending worker died"  # type: ignore[method-assign]
        status, body = get(health + "/live")
        assert status == 503 and isinstance(body, dict)
        assert body["unhealthy"] == {"exporter/sink/shared": "a sending worker died"}
        assert get(health + "/ready")[0] == 503
    finally:
        service.shutdown()


def test_not_ready_until_a_component_reports_ready(unused_port: int) -> None:
    plugin = RecordingPlugin()
    raw = two_pipelines()
    raw["extensions"] = {"health_check": {"endpoint": f"127.0.0.1:{unused_port}"}}
    raw["service"]["extensions"] = ["health_check"]
    service = make_service(raw, plugin)
    service.start()
    try:
        sink = plugin.sinks["sink/only_b"]
        sink.is_ready = lambda: False  # type: ignore[method-assign]
        status, body = get(f"http://127.0.0.1:{unused_port}/ready")
        assert status == 503 and isinstance(body, dict) and body["not_ready"] == ["exporter/sink/only_b"]
    finally:
        service.shutdown()


def test_sigterm_shuts_down_gracefully(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from prometheus_client import CollectorRegistry
            from kubenetmon.config import validate
            from kubenetmon.pipeline import Service
            from kubenetmon.plugins import build_plugin_manager, load_components
            from tests.pipeline.recording import RecordingPlugin
            from tests.pipeline.test_service import two_pipelines

            plugin = RecordingPlugin()
            registry = load_components(build_plugin_manager(load_entry_points=False, extra_plugins=[plugin]))
            service = Service(validate(two_pipelines(), registry), registry, CollectorRegistry())
            orig_start = service.start
            def start():
                orig_start()
                print("STARTED", flush=True)
            service.start = start
            service.run()
            print("EVENTS", ",".join(plugin.events), flush=True)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "STARTED"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    events = out.split("EVENTS ", 1)[1].strip().split(",")
    assert events[-1] == "shutdown sink/shared"  # exporters drain last
    assert sum(e.startswith("shutdown") for e in events) == 7
