"""The report's SQL: documented verbatim in docs/queries.md, and right on known traffic (real chDB)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kubenetmon.exporters.clickhouse.connection import Connection
from kubenetmon.report import QUERIES, ReportWindow, run_query
from tests.exporters.clickhouse.clickhouse_testkit import SECOND, T0_NS
from tests.report.report_scenario import remote_workload, rows, workload

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "queries.md"
README_QUERY = Path("/work/shared/reference/readme_query.sql")
T0 = datetime.fromtimestamp(T0_NS // SECOND, UTC)
WINDOW = ReportWindow(since=T0, until=T0 + timedelta(minutes=2))


def documented() -> dict[str, str]:
    blocks = re.findall(r"<!-- query: (\S+) -->\n```sql\n(.*?)\n```", DOCS.read_text(), re.S)
    return dict(blocks)


Row = dict[str, Any]


def in_window(window: ReportWindow = WINDOW, keep: Callable[[Row], bool] = lambda r: True) -> list[Row]:
    first = int((window.since - T0).total_seconds()) // 60
    last = int((window.until - T0).total_seconds()) // 60
    return [
        r for r in rows()
        if first <= r["minute"] < last
        and (not window.namespace or r["ns"] == window.namespace)
        and (not window.app or r["app"] == window.app)
        and keep(r)
    ]


def sums(selected: list[Row], key: Callable[[Row], tuple[Any, ...]]) -> dict[tuple[Any, ...], list[int]]:
    out: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
    for r in selected:
        out[key(r)][0 if r["direction"] == "out" else 1] += r["bytes"]
    return out


def cross_az(r: dict[str, Any]) -> bool:
    return bool(r["zone"] and r["r_zone"] and r["zone"] != r["r_zone"])


# --- documentation ---------------------------------------------------------------------


def test_every_report_query_is_documented_verbatim() -> None:
    docs = documented()
    for name, query in QUERIES.items():
        assert docs.get(name) == query.sql, f"docs/queries.md differs from the code for {name}"
    assert set(docs) == {*QUERIES, "readme"}


def test_the_original_readme_query_is_quoted_unchanged() -> None:
    if not README_QUERY.exists():
        pytest.skip(f"{README_QUERY} (the original project's README query) is not on this machine")
    assert documented()["readme"] + "\n" == README_QUERY.read_text()


@pytest.mark.parametrize("name", sorted({*QUERIES, "readme"}))
def test_each_documented_query_runs_against_chdb(name: str, seeded: Connection) -> None:
    sql = documented()[name]
    params = {k: v for k, v in WINDOW.parameters().items() if "{" + k + ":" in sql}
    if "app" in params:
        params["app"] = "api" if QUERIES[name].needs_app else ""
    result = seeded.client.query(sql, parameters=params)
    if name == "readme":
        # Relative to now(): yesterday's scenario is outside its 10 minutes. The exporter
        # tests check its answer on fresh rows.
        assert result.result_rows == []
        return
    assert result.result_rows, f"{name} returned nothing on the scenario"


# --- answers ---------------------------------------------------------------------------


def test_cross_az_pairs(seeded: Connection) -> None:
    got = run_query(seeded.client, QUERIES["cross-az"], WINDOW)
    groups = sums(in_window(keep=cross_az), lambda r: (
        r["ns"], workload(r), r["zone"], r["r_ns"], remote_workload(r), r["r_zone"]))
    expected = sorted(
        ([*k, s, rcv] for k, (s, rcv) in groups.items()), key=lambda t: (-(t[6] + t[7]), t[0], t[1], t[4])
    )
    assert got.rows == expected
    assert got.columns[-2:] == ["sent_bytes", "received_bytes"]
    assert len(expected) >= 4  # the scenario has several cross-AZ pairs; same-AZ ones are absent
    assert not any(r[2] == r[5] for r in got.rows)


def test_top_cross_az_talkers(seeded: Connection) -> None:
    got = run_query(seeded.client, QUERIES["top-talkers"], WINDOW)
    selected = in_window(keep=cross_az)
    groups = sums(selected, lambda r: (r["ns"], workload(r)))
    peers = {k: len({remote_workload(r) for r in selected if (r["ns"], workload(r)) == k}) for k in groups}
    expected = sorted(
        ([*k, s, rcv, peers[k]] for k, (s, rcv) in groups.items()), key=lambda t: (-(t[2] + t[3]), t[0], t[1])
    )
    assert got.rows == expected


def test_bytes_by_connection_class(seeded: Connection) -> None:
    got = run_query(seeded.client, QUERIES["by-class"], WINDOW)
    groups = sums(in_window(), lambda r: (r["class"],))
    expected = sorted(([*k, s, rcv] for k, (s, rcv) in groups.items()), key=lambda t: (-(t[1] + t[2]), t[0]))
    assert got.rows == expected
    assert {r[0] for r in got.rows} == {"INTRA_VPC", "INTRA_REGION", "PUBLIC_INTERNET"}


def test_bytes_by_remote_cloud_service(seeded: Connection) -> None:
    got = run_query(seeded.client, QUERIES["cloud-services"], WINDOW)
    selected = in_window(keep=lambda r: bool(r["r_service"]))
    groups = sums(selected, lambda r: (r["r_cloud"], r["r_service"], r["r_region"]))
    users = {k: len({(r["ns"], workload(r)) for r in selected if (r["r_cloud"], r["r_service"], r["r_region"]) == k})
             for k in groups}
    expected = sorted(([*k, s, rcv, users[k]] for k, (s, rcv) in groups.items()),
                      key=lambda t: (-(t[3] + t[4]), t[0], t[1], t[2]))
    assert got.rows == expected
    assert [r[1] for r in got.rows][:1] == ["S3"]


def test_initiators_separate_clients_from_inbound_only_workloads(seeded: Connection) -> None:
    got = run_query(seeded.client, QUERIES["initiators"], WINDOW)
    selected = in_window()
    expected = []
    for key in {(r["ns"], workload(r)) for r in selected}:
        mine = [r for r in selected if (r["ns"], workload(r)) == key]
        outbound = [r for r in mine if r["port"] > r["r_port"] and r["r_port"] != 0]
        inbound = [r for r in mine if r["port"] < r["r_port"] and r["port"] != 0]
        expected.append([
            *key,
            "opens outbound" if outbound else "inbound only",
            len({(r["r_ip"], r["r_port"], remote_workload(r)) for r in outbound}),
            len({(r["r_ip"], remote_workload(r)) for r in inbound}),
            sum(r["bytes"] for r in outbound),
            sum(r["bytes"] for r in inbound),
        ])
    expected.sort(key=lambda t: (t[2] != "opens outbound", -(t[5] + t[6]), t[0], t[1]))
    assert got.rows == expected
    roles = {(r[0], r[1]): r[2] for r in got.rows}
    assert roles[("data", "cache")] == "inbound only"
    assert roles[("shop", "web")] == "opens outbound"


def test_replica_balance_of_one_app(seeded: Connection) -> None:
    window = ReportWindow(since=WINDOW.since, until=WINDOW.until, app="api")
    got = run_query(seeded.client, QUERIES["replica-balance"], window)
    serving = in_window(window, keep=lambda r: r["port"] < r["r_port"] and r["port"] != 0)
    pods = sorted({(r["pod"], r["node"]) for r in serving})
    totals = {p: sum(r["bytes"] for r in serving if (r["pod"], r["node"]) == p) for p in pods}
    grand, mean = sum(totals.values()), sum(totals.values()) / len(totals)
    expected = sorted(pods, key=lambda p: (-totals[p], p[0]))
    assert [tuple(r[:2]) for r in got.rows] == expected
    for row, p in zip(got.rows, expected, strict=True):
        mine = [r for r in serving if (r["pod"], r["node"]) == p]
        assert row[2] == len({(r["r_ip"], r["r_port"]) for r in mine})
        assert row[3] == len({r["r_ip"] for r in mine})
        assert row[4] == totals[p]
        assert row[5] == pytest.approx(totals[p] / grand, abs=1e-4)
        assert row[6] == pytest.approx(totals[p] / mean, abs=1e-2)
    assert len(got.rows) == 3


@pytest.mark.parametrize("step", [60, 120])
def test_throughput_per_node_over_time(seeded: Connection, step: int) -> None:
    window = ReportWindow(since=WINDOW.since, until=WINDOW.until, step=step)
    got = run_query(seeded.client, QUERIES["throughput-node"], window)
    groups = sums(in_window(window), lambda r: (r["minute"] * 60 // step * step, r["node"]))
    expected = sorted(groups.items())
    assert [(r[0], r[1]) for r in got.rows] == [
        ((T0 + timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%SZ"), node) for (t, node), _ in expected
    ]
    for row, (_, (sent, received)) in zip(got.rows, expected, strict=True):
        assert row[2] == pytest.approx(8 * sent / step / 1e6, abs=1e-3)
        assert row[3] == pytest.approx(8 * received / step / 1e6, abs=1e-3)


def test_throughput_per_pod_over_time(seeded: Connection) -> None:
    got = run_query(seeded.client, QUERIES["throughput-pod"], WINDOW)
    groups = sums(in_window(), lambda r: (r["minute"], r["ns"], r["pod"]))
    assert [(r[0], r[1], r[2]) for r in got.rows] == [
        ((T0 + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%SZ"), ns, p) for m, ns, p in sorted(groups)
    ]


def test_window_and_filters_narrow_every_answer(seeded: Connection) -> None:
    minute_1 = ReportWindow(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=2))
    got = run_query(seeded.client, QUERIES["by-class"], minute_1)
    assert sum(r[1] + r[2] for r in got.rows) == sum(r["bytes"] for r in in_window(minute_1))
    data_ns = ReportWindow(since=WINDOW.since, until=WINDOW.until, namespace="data")
    got = run_query(seeded.client, QUERIES["initiators"], data_ns)
    assert {r[0] for r in got.rows} == {"data"}
    web = ReportWindow(since=WINDOW.since, until=WINDOW.until, app="web")
    got = run_query(seeded.client, QUERIES["top-talkers"], web)
    assert [r[1] for r in got.rows] == ["web"]
    hostile = ReportWindow(since=WINDOW.since, until=WINDOW.until, namespace="x' OR 1=1 --")
    assert run_query(seeded.client, QUERIES["by-class"], hostile).rows == []
