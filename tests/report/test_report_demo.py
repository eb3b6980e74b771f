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


def hand_priced(rows: list[list[Any]], pairs: dict[str, float] | None = None) -> dict[str, float]:
    """Each row priced from the YAML's numbers: out rows at their class's price, NAT both ways.

    ``pairs``: inter-region prices per GB by "from>to" region pair, as an override file gives them.
    """
    aws = yaml.safe_load(DEFAULT_PRICES.read_text())["clouds"]["aws"]
    pairs = {**aws["inter_region"]["pairs"], **(pairs or {})}
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
        rate = per_byte[billed]
        if billed == "inter_region" and f"{region}>{remote_region}" in pairs:
            rate = pairs[f"{region}>{remote_region}"] / aws["bytes_per_gb"]
        if direction == "out":
            cost[billed] += int(n) * rate
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

    # A region-pair price from an override file replaces the default for that pair only.
    (pair,) = {f"{r[6]}>{r[7]}" for r in json.loads(raw.stdout) if r[1] == "INTER_REGION"}
    override = tmp_path / "prices.yaml"
    override.write_text(yaml.safe_dump({"prices": {"clouds": {"aws": {"inter_region": {"pairs": {pair: 0.05}}}}}}))
    report = subprocess.run([*KUBENETMON, "report", "cost-by-class", "--endpoint", str(chdb), "--since", "1d",
                             "--format", "json", "--prices", str(override)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert report.returncode == 0, report.stderr
    got = {r["billed_class"]: r["cost_usd"] for r in json.loads(report.stdout)["cost-by-class"]}
    assert got == pytest.approx(hand_priced(json.loads(raw.stdout), {pair: 0.05}), rel=1e-9)
    assert got["inter_region"] == pytest.approx(expected["inter_region"] * 0.05 / 0.02, rel=1e-9)

    page = data / "report.html"
    html = subprocess.run([*KUBENETMON, "report", "--format", "html", "--out", str(page), "--endpoint", str(chdb),
                           "--since", "1d"], capture_output=True, text=True, timeout=120, check=False)
    assert html.returncode == 0, html.stderr
    assert str(page) in html.stdout
    assert page.stat().st_size > 1_000_000  # plotly's JavaScript is inside
