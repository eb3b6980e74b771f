"""The shipped DDL, creating the table from it, and the start-up schema check (real chDB)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubenetmon.exporters.clickhouse.connection import Connection
from kubenetmon.exporters.clickhouse.schema import (
    COLUMNS,
    SchemaError,
    check_table,
    create_table,
    render_ddl,
    shipped_ddl,
)
from kubenetmon.flows import Endpoint, FlowBatch
from tests.exporters.clickhouse.clickhouse_testkit import make_flow, table_rows, wait_until

REPO = Path(__file__).resolve().parents[3]
REFERENCE = Path("/work/shared/reference")


def test_shipped_ddl_is_the_original_unchanged() -> None:
    config_copy = (REPO / "config" / "network_flows_0.sql").read_text()
    assert shipped_ddl() == config_copy
    if (REFERENCE / "network_flows_0.sql").exists():
        assert config_copy == (REFERENCE / "network_flows_0.sql").read_text()


def test_rendered_ddl_targets_the_configured_table_and_enables_deduplication() -> None:
    ddl = render_ddl("metering", "flows_v2", deduplication_window=500)
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS `metering`.`flows_v2`")
    assert "default.network_flows_0" not in ddl
    assert ddl.rstrip().endswith(
        "SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, non_replicated_deduplication_window = 500"
    )
    assert "non_replicated_deduplication_window" not in render_ddl("d", "t", deduplication_window=0)


def test_shipped_ddl_creates_a_table_with_exactly_the_columns_we_write(db: Connection) -> None:
    create_table(db.client, "metering", "flows", 1000)
    described = [(r[0], r[1]) for r in db.client.query("DESCRIBE TABLE metering.flows").result_rows]
    assert described == list(COLUMNS)
    assert check_table(db.client, "metering", "flows") == []  # no dedup warning on a table we made
    engine = db.client.query("SELECT engine_full FROM system.tables WHERE name = 'flows'").result_rows[0][0]
    assert "SummingMergeTree" in engine
    assert "non_replicated_deduplication_window = 1000" in engine


def test_creating_the_table_twice_is_harmless(db: Connection) -> None:
    create_table(db.client, "default", "network_flows_0", 1000)
    create_table(db.client, "default", "network_flows_0", 1000)
    assert check_table(db.client, "default", "network_flows_0") == []


def test_check_names_every_mismatched_column(db: Connection) -> None:
    db.client.command(
        "CREATE TABLE default.network_flows_0 (date Date, intervalStartTime DateTime64(3), "
        "direction String, bytes UInt64) ENGINE = MergeTree ORDER BY date"
    )
    with pytest.raises(SchemaError) as err:
        check_table(db.client, "default", "network_flows_0")
    message = str(err.value)
    assert "column intervalStartTime is DateTime64(3), expected DateTime" in message
    assert "column direction is String, expected Enum8('out' = 1, 'in' = 2)" in message
    assert "column localPod is missing" in message
    assert "column date" not in message


def test_missing_table_fails_start_when_schema_creation_is_off(make_exporter) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SchemaError, match=r"table default\.network_flows_0 does not exist.*create_schema: true"):
        make_exporter(create_schema=False)


def test_start_with_a_mismatched_table_fails_with_the_reason(db: Connection, make_exporter) -> None:  # type: ignore[no-untyped-def]
    db.client.command(
        "CREATE TABLE default.network_flows_0 (date Date, localIPv4 String) ENGINE = MergeTree ORDER BY date"
    )
    with pytest.raises(SchemaError, match="column localIPv4 is String, expected IPv4"):
        make_exporter()


def test_table_without_deduplication_window_gets_a_warning(db: Connection) -> None:
    ddl = shipped_ddl().rstrip().rstrip(";")
    db.client.command(ddl)
    warnings = check_table(db.client, "default", "network_flows_0")
    assert len(warnings) == 1
    assert "non_replicated_deduplication_window" in warnings[0]


def test_equal_keys_sum_under_final_sum_and_optimize(db: Connection, make_exporter) -> None:  # type: ignore[no-untyped-def]
    exporter = make_exporter()
    # Three blocks (max_wait 0: one block per batch) with the same key: three inserts, three parts.
    for n in (100, 250, 4000):
        exporter.consume(FlowBatch(flows=[make_flow("out", nbytes=n, packets=n // 50)]))
    assert wait_until(lambda: exporter.m_blocks.value() == 3)
    client = db.client
    assert client.query("SELECT sum(bytes), sum(packets) FROM default.network_flows_0").result_rows == [(4350, 87)]
    final = table_rows(db, final=True)
    assert [(r["bytes"], r["packets"]) for r in final] == [(4350, 87)]
    client.command("OPTIMIZE TABLE default.network_flows_0 FINAL")
    merged = table_rows(db)
    assert [(r["bytes"], r["packets"]) for r in merged] == [(4350, 87)]


def test_original_readme_query_returns_the_expected_table(db: Connection, make_exporter) -> None:  # type: ignore[no-untyped-def]
    import time

    # The README query exactly as docs/queries.md quotes it (tests/report checks it is the original's).
    docs = (REPO / "docs" / "queries.md").read_text()
    readme = docs.split("<!-- query: readme -->\n```sql\n", 1)[1].split("```", 1)[0]
    from datetime import UTC, datetime

    if datetime.now().date() != datetime.now(UTC).date():
        pytest.skip("the README query filters on today() in the process time zone, which is on another day than UTC")
    seconds_into_day = time.time() % 86400
    if seconds_into_day < 75:  # today's first minute bucket must be complete: wait for it
        time.sleep(75 - seconds_into_day)
    now = time.time_ns()
    api = Endpoint(address="10.0.0.1", port=8080, pod="api-1", app="api")
    web = Endpoint(address="10.0.1.2", port=41000, pod="web-1", app="web")
    s3 = Endpoint(address="52.218.1.1", port=443, cloud="aws", cloud_service="S3")
    old = now - 30 * 60 * 1_000_000_000  # outside the README's 10-minute window
    flows = [
        make_flow("out", nbytes=3 * 1024 * 1024, end_ns=now, local=web, remote=api),
        make_flow("out", nbytes=1024 * 1024, end_ns=now, local=web, remote=api),
        make_flow("in", nbytes=7 * 1024 * 1024, end_ns=now, local=web, remote=api),  # direction = 'in'
        make_flow("out", nbytes=2048, end_ns=now, local=api, remote=s3, connection_class="INTRA_REGION"),
        make_flow("out", nbytes=10**9, end_ns=old, local=api, remote=web),
        make_flow("out", nbytes=512, end_ns=now, local=api, remote=web),
    ]
    exporter = make_exporter()
    exporter.consume(FlowBatch(flows=flows))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    rows = db.client.query(readme).result_rows
    assert rows == [
        ("web-1", "api-1", "INTRA_VPC", "4.00 MiB"),
        ("api-1", "", "INTRA_REGION", "2.00 KiB"),
        ("api-1", "web-1", "INTRA_VPC", "512.00 B"),
    ]
