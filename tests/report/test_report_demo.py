"""The demo's run, priced: cost by class equals a hand calculation from its stored bytes and the default
price table; the HTML report is written next to the data (real kernel, real agents, real chDB)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubenetmon.report.prices import DEFAULT_PRICES
from tests.e2e.harness import require_root

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(300)]

KUBENETMON = [sys.executable, "-m", "kubenetmon"]
# The stored bytes as they are, one line per kind of row; priced below in Python.
RAW = """SELECT direction, connectionClass, localAvailabilityZone, remoteAvailabilityZone,
  connectionFlags['NAT_GATEWAY'] AS nat, localCloud, localRegion, remoteRegion, sum(bytes)
FROM default.network_flows_0
GROUP BY ALL"""
_CHILD = ("import json, sys; from pathlib import Path; from kubenetmon.demo.pipeline import query_chdb; "
          "print(json.dumps(query_chdb(Path(sys.argv[1]), sys.argv[2]), default=str))")


def hand_priced(rows: list[list[Any]]) -> dict[str, float]:
    """Each row priced from the YAML's numbers: out rows at their class's price, NAT both ways."""
    aws = yaml.safe_load(DEFAULT_PRICES.read_text())["clouds"]["aws"]
    per_byte = {k: v / aws["bytes_per_gb"] for k, v in {
        "inter_zone": aws["inter_zone"]["out"] + aws["inter_zone"]["in"],
        "internet": aws["internet_egress"], "cloud_service": aws["cloud_service"],
        "inter_region": aws["inter_region"]["default"], "same_zone": 0.0,
    }.items()}
    cost: dict[str, float] = defaultdict(float)
    for direction, klass, zone, remote_zone, nat, cloud, region, remote_region, n in rows:
        assert cloud == "aws"
        if klass == "INTRA_VPC":
            billed = "inter_zone" if zone and remote_zone and zone != remote_zone else "same_zone"
        else:
            billed = {"INTRA_REGION": "cloud_service", "INTER_REGION": "inter_region",
                      "PUBLIC_INTERNET": "internet"}[klass]
        assert f"{region}>{remote_region}" not in aws["inter_region"]["pairs"]  # the demo's pair is the default
        if direction == "out":
            cost[billed] += int(n) * per_byte[billed]
        if nat in (True, 1, "true", "True"):
            cost[billed] += int(n) * aws["nat_gateway"] / aws["bytes_per_gb"]
    return dict(cost)


def test_demo_cost_by_class_matches_a_hand_calculation(tmp_path: Path) -> None:
    require_root()
    data = tmp_path / "demo"
    demo = subprocess.run([*KUBENETMON, "demo", "--duration", "6", "--data-dir", str(data)],
                          capture_output=True, text=True, timeout=240, check=False)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    chdb = data / "chdb"
    raw = subprocess.run([sys.executable, "-c", _CHILD, str(chdb), RAW],
                         capture_output=True, text=True, timeout=120, check=True)
    expected = hand_priced(json.loads(raw.stdout))
    assert expected["inter_zone"] > 0 and expected["inter_region"] > 0 and expected["internet"] > 0

    report = subprocess.run([*KUBENETMON, "report", "cost-by-class", "--endpoint", str(chdb), "--since", "1d",
                             "--format", "json"], capture_output=True, text=True, timeout=120, check=False)
    assert report.returncode == 0, report.stderr
    answer = json.loads(report.stdout)
    got = {r["billed_class"]: r["cost_usd"] for r in answer["cost-by-class"]}
    assert got == pytest.approx(expected, rel=1e-9)
    assert answer["prices"]["read"] == str(yaml.safe_load(DEFAULT_PRICES.read_text())["read"])

    page = data / "report.html"
    html = subprocess.run([*KUBENETMON, "report", "--format", "html", "--out", str(page), "--endpoint", str(chdb),
                           "--since", "1d"], capture_output=True, text=True, timeout=120, check=False)
    assert html.returncode == 0, html.stderr
    assert str(page) in html.stdout
    assert page.stat().st_size > 1_000_000  # plotly's JavaScript is inside
