"""What the traffic costs: the price table, the cost SQL against a hand calculation (real chDB), the CLI."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kubenetmon.cli import main
from kubenetmon.exporters.clickhouse.connection import Connection
from kubenetmon.report import ReportWindow, run_query
from kubenetmon.report.cost import COST_QUERIES, cost_parameters
from kubenetmon.report.prices import load_prices
from tests.exporters.clickhouse.clickhouse_testkit import SECOND, T0_NS

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "queries.md"
T0 = datetime.fromtimestamp(T0_NS // SECOND, UTC)
WINDOW = ReportWindow(since=T0, until=T0 + timedelta(minutes=2))
SINCE, UNTIL = T0.strftime("%Y-%m-%dT%H:%M:%SZ"), (T0 + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
GIB = 1 << 30

# The hand calculation, from the connections of tests/report/report_scenario.py in the window
# (bytes each way; every byte is billed once, on the out row of the side that sent it).
INTER_ZONE_BYTES = (
    (1000 + 5000)  # web-1 (a) <-> api-1 (b)
    + (400 + 600)  # web-1 (a) <-> api-1 (b), minute 1
    + (9000 + 100)  # web-1 (a) <-> api-3 (b)
    + (700 + 9000)  # api-2 (a) <-> db-1 (b)
    + (300 + 4000)  # api-1 (b) <-> cache-1 (a)
)
SAME_ZONE_BYTES = (3000 + 2000) + (200 + 2500)  # web-1 <-> api-2, api-2 <-> cache-1 (all in zone a)
INTERNET_BYTES = 10  # api-1 -> 1.2.3.4 (the 20 bytes back are Internet ingress: free)
CLOUD_SERVICE_BYTES = 700 + 123456 + 50  # web-1 -> S3, db-1 -> S3, api-3 -> DynamoDB
NAT_BYTES = (10 + 20) + (123456 + 10)  # both directions of the two NAT_GATEWAY flows
# Default AWS list prices: $0.01/GB each direction across zones, $0.09/GB Internet, $0.045/GB NAT.
EXPECTED_USD = {
    "inter_zone": INTER_ZONE_BYTES * (0.01 + 0.01) / GIB,
    "same_zone": 0.0,
    "internet": INTERNET_BYTES * 0.09 / GIB + (10 + 20) * 0.045 / GIB,
    "cloud_service": (123456 + 10) * 0.045 / GIB,
}


def cost(seeded: Connection, name: str, window: ReportWindow = WINDOW, prices_file: Path | None = None) -> Any:
    return run_query(seeded.client, COST_QUERIES[name], window, cost_parameters(load_prices(prices_file)))


def test_default_prices_name_their_sources_and_date() -> None:
    table = load_prices()
    for name, cloud in table.clouds.items():
        assert cloud.source.startswith("https://"), name
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", table.read.isoformat())
    assert "read " + table.read.isoformat() in table.caption()
    assert table.rates()["aws/inter_zone"] * GIB == pytest.approx(0.02)  # both sides of the zone boundary


def test_cost_by_class_matches_the_hand_calculation(seeded: Connection) -> None:
    got = {r["billed_class"]: r for r in cost(seeded, "cost-by-class").records()}
    assert set(got) == {"inter_zone", "same_zone", "internet", "cloud_service"}
    assert got["inter_zone"]["billed_bytes"] == INTER_ZONE_BYTES
    assert got["same_zone"]["billed_bytes"] == SAME_ZONE_BYTES
    assert got["internet"]["billed_bytes"] == INTERNET_BYTES
    assert got["cloud_service"]["billed_bytes"] == CLOUD_SERVICE_BYTES
    assert sum(r["nat_bytes"] for r in got.values()) == NAT_BYTES
    for klass, usd in EXPECTED_USD.items():
        assert got[klass]["cost_usd"] == pytest.approx(usd, rel=1e-12), klass
    assert got["cloud_service"]["transfer_usd"] == 0.0  # same-region S3 is free; only the NAT processing costs


def test_each_byte_between_two_monitored_pods_is_billed_once(seeded: Connection) -> None:
    """web-1 -> api-1 is seen by both pods' nodes (4 rows); only the two senders' out rows are billed."""
    pairs = {(r["workload"], r["remote_workload"]): r for r in cost(seeded, "cost-by-pair").records()}
    assert pairs[("web", "api")]["billed_bytes"] == 1000 + 400 + 9000  # to api-1 (twice) and api-3
    assert pairs[("api", "web")]["billed_bytes"] == 5000 + 600 + 100
    assert sum(r["billed_bytes"] for r in pairs.values()) == INTER_ZONE_BYTES
    assert all(r["zone"] != r["remote_zone"] for r in pairs.values())


def test_cost_by_namespace_and_service_add_up(seeded: Connection) -> None:
    by_ns = {r["namespace"]: r for r in cost(seeded, "cost-by-namespace").records()}
    assert set(by_ns) == {"shop", "data"}
    assert sum(r["cost_usd"] for r in by_ns.values()) == pytest.approx(sum(EXPECTED_USD.values()), rel=1e-12)
    # data: db-1 -> S3 through NAT; across zones db-1 -> api-2 (9000 B) and cache-1 -> api-1 (4000 B).
    assert by_ns["data"]["nat_usd"] == pytest.approx((123456 + 10) * 0.045 / GIB, rel=1e-12)
    assert by_ns["data"]["inter_zone_usd"] == pytest.approx((9000 + 4000) * 0.02 / GIB, rel=1e-12)
    services = {r["service"]: r for r in cost(seeded, "cost-by-service").records()}
    assert services["S3"]["billed_bytes"] == 700 + 123456
    assert services["S3"]["cost_usd"] == pytest.approx(EXPECTED_USD["cloud_service"], rel=1e-12)
    assert services["DYNAMODB"]["cost_usd"] == 0.0


def test_overrides_discount_and_flat_cross_zone_price(seeded: Connection, tmp_path: Path) -> None:
    override = tmp_path / "prices.yaml"
    # A report config with a prices: section; the flat price replaces both sides of the zone boundary.
    override.write_text("prices:\n  cross_zone_per_gb: 0.05\n  discount: 0.2\n  clouds: {aws: {nat_gateway: 0}}\n")
    got = {r["billed_class"]: r for r in cost(seeded, "cost-by-class", prices_file=override).records()}
    assert got["inter_zone"]["cost_usd"] == pytest.approx(INTER_ZONE_BYTES * 0.05 * 0.8 / GIB, rel=1e-12)
    assert got["internet"]["cost_usd"] == pytest.approx(INTERNET_BYTES * 0.09 * 0.8 / GIB, rel=1e-12)
    assert got["cloud_service"]["cost_usd"] == 0.0
    caption = load_prices(override).caption()
    assert "discount 20%" in caption and "all cross-zone at 0.05 USD/GB" in caption and str(override) in caption


def test_cost_over_time_sums_to_the_window_total(seeded: Connection) -> None:
    series = cost(seeded, "cost-over-time").records()
    assert len({r["time"] for r in series}) == 2  # two one-minute steps
    assert sum(r["cost_usd"] for r in series) == pytest.approx(sum(EXPECTED_USD.values()), rel=1e-12)
    by_ns = cost(seeded, "cost-namespace-over-time").records()
    assert sum(r["cost_usd"] for r in by_ns) == pytest.approx(sum(EXPECTED_USD.values()), rel=1e-12)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("discount: 1.5\n", "discount"),
        ("clouds: {aws: {inter_region: {pairs: {us-east-1: 0.02}}}}\n", "from-region>to-region"),
        ("- 0.01\n", "a price file is a mapping"),
        ("default_cloud: oracle\n", "has no prices"),
    ],
)
def test_bad_price_files_say_what_to_fix(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_prices(path)


# --- documentation and CLI ------------------------------------------------------------


def test_every_cost_query_is_documented_verbatim() -> None:
    documented = dict(re.findall(r"<!-- cost-query: (\S+) -->\n```sql\n(.*?)\n```", DOCS.read_text(), re.S))
    assert documented == {name: q.sql for name, q in COST_QUERIES.items()}


def test_cost_question_prints_every_summary_with_the_price_date(seeded: Connection, chdb_path: Path,
                                                                 capsys: Any) -> None:
    code = main(["report", "cost", "--endpoint", str(chdb_path), "--since", SINCE, "--until", UNTIL])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"prices: USD list prices read {load_prices().read.isoformat()}" in out
    for name in ("cost-by-class", "cost-by-pair", "cost-by-namespace", "cost-by-service"):
        assert COST_QUERIES[name].title in out
    assert "$" in out


def test_cost_question_as_json_keeps_exact_numbers(seeded: Connection, chdb_path: Path, capsys: Any) -> None:
    code = main(["report", "cost", "--endpoint", str(chdb_path), "--since", SINCE, "--until", UNTIL,
                 "--format", "json"])
    out, _ = capsys.readouterr()
    assert code == 0
    answer = json.loads(out)
    assert answer["prices"]["read"] == load_prices().read.isoformat()
    by_class = {r["billed_class"]: r["cost_usd"] for r in answer["cost-by-class"]}
    assert by_class["inter_zone"] == pytest.approx(EXPECTED_USD["inter_zone"], rel=1e-12)


def test_a_bad_price_file_is_a_usage_error(seeded: Connection, chdb_path: Path, tmp_path: Path,
                                          capsys: Any) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("discount: -1\n")
    code = main(["report", "cost", "--endpoint", str(chdb_path), "--prices", str(path)])
    _, err = capsys.readouterr()
    assert code == 2
    assert str(path) in err and "discount" in err
