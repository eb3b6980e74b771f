"""Helpers of the Helm chart tests: paths, the README's --set lines, rendering and validation."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHARTS = REPO / "charts"
SERVER = CHARTS / "kubenetmon-server"
AGENT = CHARTS / "kubenetmon-agent"
KUBE_VERSIONS = ("1.29.0", "1.33.0")

# The original README's install lines (reference §11), with HOST and the password filled in.
README_SERVER_SETS: dict[str, str] = {
    "region": "us-west-2",
    "cluster": "cluster",
    "environment": "development",
    "cloud": "aws",
    "inserter.endpoint": "abc123.us-west-2.aws.clickhouse.cloud:9440",
    "inserter.username": "default",
    "inserter.password": "s3cr3t-Pa55",
    "deployment.replicaCount": "1",
}
README_AGENT_SETS: dict[str, str] = {"configuration.skipConntrackSanityCheck": "true"}


@dataclass
class Rendered:
    """The manifests one ``helm template`` produced, plus the command's output."""

    docs: list[dict[str, Any]]
    stdout: str
    args: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
        return found[0]

    def configmap_pipeline(self) -> dict[str, Any]:
        data = yaml.safe_load(self.one("ConfigMap")["data"]["config.yaml"])
        assert isinstance(data, dict)
        return data

    def pod_spec(self) -> dict[str, Any]:
        workloads = self.of_kind("Deployment") + self.of_kind("DaemonSet")
        assert len(workloads) == 1
        spec = workloads[0]["spec"]["template"]["spec"]
        assert isinstance(spec, dict)
        return spec

    def container(self, name: str) -> dict[str, Any]:
        for c in self.pod_spec()["containers"]:
            if c["name"] == name:
                return dict(c)
        raise AssertionError(f"no container {name!r}")


def set_args(sets: Mapping[str, str] | None, set_strings: Mapping[str, str] | None) -> list[str]:
    args: list[str] = []
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    for key, value in (set_strings or {}).items():
        args += ["--set-string", f"{key}={value}"]
    return args


def run_helm(helm: str, args: Iterable[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm, *args], check=False, capture_output=True, text=True, timeout=120, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def kubenetmon_validate(pipeline: Mapping[str, Any], tmp_path: Path, env: Mapping[str, str] | None = None) -> None:
    """Run the real ``kubenetmon validate`` on a rendered pipeline; fail with its output."""
    path = tmp_path / "rendered-config.yaml"
    path.write_text(yaml.safe_dump(dict(pipeline), sort_keys=False))
    exe = Path(sys.executable).with_name("kubenetmon")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "kubenetmon"]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [*cmd, "validate", "--config", str(path)], check=False, capture_output=True, text=True, timeout=120,
        env=full_env,
    )
    assert proc.returncode == 0, (
        f"kubenetmon validate rejected the chart's pipeline (exit {proc.returncode}):\n"
        f"{proc.stdout}{proc.stderr}\n--- config ---\n{path.read_text()}"
    )
