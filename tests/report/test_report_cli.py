"""``kubenetmon report`` through the real CLI: formats, windows, errors."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kubenetmon.cli import main
from kubenetmon.exporters.clickhouse.connection import Connection
from kubenetmon.report import QUERIES, ReportWindow, parse_time, run_query
from tests.exporters.clickhouse.clickhouse_testkit import SECOND, T0_NS, chdb_path_held_by_another_process

T0 = datetime.fromtimestamp(T0_NS // SECOND, UTC)
SINCE, UNTIL = T0.strftime("%Y-%m-%dT%H:%M:%SZ"), (T0 + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")


def report(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(["report", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_is_the_query_result(seeded: Connection, chdb_path: Path, capsys: Any) -> None:
    expected = run_query(seeded.client, QUERIES["cross-az"], ReportWindow(T0, T0 + timedelta(minutes=2)))
    code, out, _ = report(capsys, "cross-az", "--endpoint", str(chdb_path), "--since", SINCE, "--until", UNTIL,
                          "--format", "json")
    assert code == 0
    assert json.loads(out) == expected.records()


def test_csv_output_has_a_header_and_one_line_per_row(seeded: Connection, chdb_path: Path, capsys: Any) -> None:
    code, out, _ = report(capsys, "by-class", "--endpoint", f"chdb://{chdb_path}", "--since", SINCE,
                          "--until", UNTIL, "--format", "csv")
    assert code == 0
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["connection_class", "sent_bytes", "received_bytes"]
    expected = run_query(seeded.client, QUERIES["by-class"], ReportWindow(T0, T0 + timedelta(minutes=2)))
    assert table[1:] == [[str(v) for v in row] for row in expected.rows]


def test_table_output_is_titled_aligned_and_readable(seeded: Connection, chdb_path: Path, capsys: Any) -> None:
    code, out, _ = report(capsys, "replica-balance", "--endpoint", str(chdb_path), "--app", "api",
                          "--since", SINCE, "--until", UNTIL)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("window: ") and "app=api" in lines[0]
    assert "Balance of client traffic across the server replicas of one app (3 rows)" in out
    header = next(line for line in lines if line.startswith("REPLICA"))
    body = lines[lines.index(header) + 1:]
    assert [line.split()[0] for line in body[:3]] == ["api-3", "api-1", "api-2"]
    assert "KiB" in out  # bytes are shown in readable units in a terminal


def test_all_answers_every_question_that_needs_no_app(seeded: Connection, chdb_path: Path, capsys: Any) -> None:
    code, out, _ = report(capsys, "all", "--endpoint", str(chdb_path), "--since", SINCE, "--until", UNTIL,
                          "--format", "json", "--namespace", "shop")
    assert code == 0
    answers = json.loads(out)
    assert set(answers) == {n for n, q in QUERIES.items() if not q.needs_app}
    assert {row["namespace"] for row in answers["initiators"]} == {"shop"}


def test_empty_window_says_so(seeded: Connection, chdb_path: Path, capsys: Any) -> None:
    code, out, _ = report(capsys, "cross-az", "--endpoint", str(chdb_path), "--since", "2h", "--until", "1h")
    assert code == 0
    assert "(no data in this window)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replica-balance"], "replica-balance needs --app"),
        (["by-class", "--since", "yesterday-ish"], "is not a time"),
        (["by-class", "--since", "1h", "--until", "2h"], "must be before --until"),
        (["all", "--format", "csv"], "--format csv prints one question"),
    ],
)
def test_usage_errors_exit_2_with_what_to_do(argv: list[str], message: str, tmp_path: Path, capsys: Any) -> None:
    code, _, err = report(capsys, *argv, "--endpoint", str(tmp_path / "chdb"))
    assert code == 2
    assert message in err


def test_missing_endpoint_is_a_usage_error(capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("KUBENETMON_CLICKHOUSE_ENDPOINT", raising=False)
    code, _, err = report(capsys, "by-class")
    assert code == 2
    assert "--endpoint" in err


def test_missing_chdb_path_is_reported_not_created(tmp_path: Path, capsys: Any) -> None:
    code, _, err = report(capsys, "by-class", "--endpoint", str(tmp_path / "nothing"))
    assert code == 1
    assert "no chDB data at" in err
    assert not (tmp_path / "nothing").exists()


def test_missing_table_is_reported(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = report(capsys, "by-class", "--endpoint", str(tmp_path / "empty"))
    assert code == 1
    assert "network_flows_0" in err


def test_a_chdb_path_held_by_a_running_process_is_explained(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "held"
    with chdb_path_held_by_another_process(path):
        code, _, err = report(capsys, "by-class", "--endpoint", str(path))
    assert code == 1
    assert "in use by another process" in err
    assert "status" in err


def test_times_are_durations_back_from_now_or_utc_iso() -> None:
    now = datetime(2025, 3, 31, 12, 0, tzinfo=UTC)
    assert parse_time("30m", now) == now - timedelta(minutes=30)
    assert parse_time("7d", now) == now - timedelta(days=7)
    assert parse_time("now", now) == now
    assert parse_time("2025-03-30", now) == datetime(2025, 3, 30, tzinfo=UTC)
    assert parse_time("2025-03-30T10:00:00+02:00", now) == datetime(2025, 3, 30, 8, tzinfo=UTC)
    assert parse_time("2025-03-30T10:00:00Z", now) == datetime(2025, 3, 30, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="30m, 2h, 7d"):
        parse_time("last tuesday", now)
