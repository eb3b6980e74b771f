"""Every shipped config validates; the shipped DDL is the original's, byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "config").glob("*.yaml"))


def kubenetmon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubenetmon", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )


def test_there_are_agent_gateway_and_standalone_configs() -> None:
    assert {p.stem for p in CONFIGS} >= {"agent", "gateway", "standalone"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path: Path) -> None:
    result = kubenetmon("validate", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"config OK: {path}"


def test_a_broken_config_prints_all_its_errors_and_exits_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = (ROOT / "config" / "gateway.yaml").read_text()
    text = text.replace("source: ${env:K8S_SOURCE:-kubernetes}", "source: etcd")
    text = text.replace("processors: [k8s_attributes, cloud_prefix]", "processors: [k8s, cloud_prefix]")
    text = text.replace("table: ${env:CLICKHOUSE_TABLE:-network_flows_0}", "table: t\n    tabel: x")
    broken.write_text(text)
    result = kubenetmon("validate", "--config", str(broken))
    assert result.returncode == 2
    lines = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert "processors::k8s_attributes::source: 'etcd' is not one of kubernetes, static" in lines
    assert any(line.startswith("exporters::clickhouse::tabel: unknown key; known keys:") for line in lines)
    assert (
        "service::pipelines::flows: references processor 'k8s' which is not configured; "
        "known: cloud_prefix, k8s_attributes" in lines
    )


def test_config_files_merge_later_wins(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("exporters:\n  clickhouse:\n    table: other_table\n")
    result = kubenetmon("print-config", "--config", str(ROOT / "config" / "gateway.yaml"), "--config", str(overlay))
    assert result.returncode == 0, result.stderr
    assert "table: other_table" in result.stdout
    assert "endpoint: chdb:///var/lib/kubenetmon/chdb" in result.stdout  # the rest is kept


def test_shipped_ddl_is_the_original() -> None:
    shipped = (ROOT / "config" / "network_flows_0.sql").read_bytes()
    packaged = ROOT / "kubenetmon" / "exporters" / "clickhouse" / "network_flows_0.sql"
    if packaged.exists():  # the exporter carries a copy so that an installed wheel has it
        assert packaged.read_bytes() == shipped
    reference = ROOT.parent / "shared" / "reference" / "network_flows_0.sql"
    if reference.exists():
        assert reference.read_bytes() == shipped
