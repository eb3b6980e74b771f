"""The README's main job: ``kubenetmon demo`` end to end, then ``kubenetmon report`` on what it left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kubenetmon.cli import main
from kubenetmon.netns import list_namespaces
from tests.e2e.harness import require_root

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(240)]

KUBENETMON = [sys.executable, "-m", "kubenetmon"]


def test_demo_meters_the_minicluster_exactly_and_leaves_data_for_the_report(tmp_path: Path) -> None:
    require_root()
    data = tmp_path / "demo"
    demo = subprocess.run([*KUBENETMON, "demo", "--duration", "6", "--data-dir", str(data)],
                          capture_output=True, text=True, timeout=200, check=False)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert "FROM default.network_flows_0" in out
    assert "every one exact" in out, out
    # The README query's rows: cross-zone pod pairs, S3 of another region, the Internet.
    assert any(line.split()[:3] == ["catalog-0", "frontend-0", "INTRA_VPC"] for line in out.splitlines())
    assert any(line.split()[:2] == ["frontend-0", "INTER_REGION"] for line in out.splitlines())
    assert any(line.split()[:2] == ["payments-0", "PUBLIC_INTERNET"] for line in out.splitlines())
    assert not [n for n in list_namespaces() if n.startswith("knmdemo-")]

    report = subprocess.run([*KUBENETMON, "report", "all", "--endpoint", f"chdb://{data / 'chdb'}"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "us-west-2a" in report.stdout and "s3" in report.stdout.lower()


def test_demo_without_root_says_what_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Running as another user is not possible here (the interpreter lives under /root), so the
    # effective uid is what we fake; the command line and everything after it are real.
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert main(["demo", "--data-dir", str(tmp_path / "demo")]) == 1
    err = capsys.readouterr().err
    assert "needs root" in err and "sudo ./scripts/demo" in err
    assert not (tmp_path / "demo").exists(), "nothing is created before the check"
