from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kubenetmon.cli import main, mask_secrets

GOOD = """
exporters:
  debug: {verbosity: basic}
  debug/loud: {verbosity: detailed}
receivers: {}
extensions:
  health_check: {endpoint: "127.0.0.1:${env:HC_PORT:-13133}"}
service:
  extensions: [health_check]
  pipelines: {}
"""


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("kubenetmon 0.")


def test_validate_reports_every_problem_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "exporters:\n  debug: {verbosity: loud}\n  kafka: {}\n"
        "service:\n  pipelines:\n    flows: {receivers: [otlpp], exporters: [debug]}\n"
    )
    assert main(["validate", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "exporters::debug::verbosity: 'loud' is not one of basic, normal, detailed" in err
    assert "exporters::kafka: unknown exporter type 'kafka'" in err
    assert "service::pipelines::flows: references receiver 'otlpp' which is not configured" in err


def test_print_config_substitutes_and_masks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HC_PORT", "9999")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD)
    assert main(["print-config", "--no-validate", "--config", str(cfg)]) == 0
    assert 'endpoint: 127.0.0.1:9999' in capsys.readouterr().out


def test_mask_secrets_hides_passwords_tokens_and_url_credentials() -> None:
    masked = mask_secrets(
        {"clickhouse": {"password": "hunter2", "endpoint": "https://default:hunter2@ch:8443/db", "username": "u"},
         "headers": {"authorization": "Bearer abc"}, "empty_token": {"token": ""}}
    )
    assert masked == {
        "clickhouse": {"password": "<redacted>", "endpoint": "https://default:<redacted>@ch:8443/db", "username": "u"},
        "headers": {"authorization": "<redacted>"},
        "empty_token": {"token": ""},
    }


def test_components_lists_builtins_with_their_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["components", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    debug = next(r for r in rows if r["type"] == "debug")
    assert debug == {
        "kind": "exporter", "type": "debug", "stability": "beta", "plugin": "kubenetmon.exporters.debug",
        "description": debug["description"],
    }


def test_console_script_runs() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("kubenetmon")), "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("kubenetmon ")


def test_run_tunes_the_cyclic_gc_for_flow_bursts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from kubenetmon.cli import GC_THRESHOLDS
    from kubenetmon.pipeline import Service

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "receivers: {otlp: {grpc: {endpoint: '127.0.0.1:0'}}}\nexporters: {debug: {}}\n"
        "service: {pipelines: {flows: {receivers: [otlp], exporters: [debug]}}}\n"
    )
    monkeypatch.setattr(Service, "run", lambda self: None)
    before = gc.get_threshold()
    try:
        assert main(["run", "--config", str(cfg)]) == 0
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.set_threshold(*before)


def test_json_logs_print_each_line_once_as_json(tmp_path: Path) -> None:
    # Issue 16 item 11: main() installed a plain root handler and `run` added the JSON one, so every line
    # appeared twice, once not JSON.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "receivers: {otlp: {grpc: {endpoint: '127.0.0.1:0'}}}\nexporters: {debug: {}}\n"
        "service:\n  pipelines: {flows: {receivers: [otlp], exporters: [debug]}}\n"
        "  telemetry: {metrics: {address: ''}, logs: {level: info, encoding: json}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubenetmon", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if "kubenetmon started" in line:
                break
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        lines += proc.stderr.read().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, lines
    entries = [json.loads(line) for line in lines]  # every line is JSON
    messages = [e["message"] for e in entries]
    assert any("kubenetmon started" in m for m in messages) and "kubenetmon stopped" in messages
    assert len(messages) == len(set(messages)), messages
