"""The exporter's HTTP(S) path, for real: clickhouse-connect's HTTP client against an
endpoint speaking ClickHouse's HTTP interface and executing on chDB
(tests/fixtures/clickhouse_http.py), with faults made by that endpoint.

What the exporter must do: retry 5xx answers and dropped connections; count a
retried insert whose answer was lost once (the dedup token); refuse to start
on a table that does not match; keep (not drop) blocks while credentials are
wrong; fail over to the next endpoint. Nothing is lost or doubled.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubenetmon.exporters.clickhouse import ClickHouseConfig, ClickHouseExporter
from kubenetmon.exporters.clickhouse.connection import connect
from kubenetmon.exporters.clickhouse.schema import SchemaError
from kubenetmon.flows import FlowBatch
from tests.exporters.clickhouse.clickhouse_testkit import SECOND, T0_NS, make_flow, wait_until
from tests.fixtures.clickhouse_http import ClickHouseHTTP, clickhouse_http
from tests.otlp.otlp_testkit import free_port, make_tls

PASSWORD = "s3cret pass"  # a space: basic auth must carry it intact


@pytest.fixture
def ch(tmp_path: Path) -> Iterator[ClickHouseHTTP]:
    with clickhouse_http(tmp_path / "server", password=PASSWORD) as endpoint:
        yield endpoint


def http_exporter(make_exporter: Any, ch: ClickHouseHTTP, **overrides: Any) -> ClickHouseExporter:
    fields: dict[str, Any] = {"endpoint": ch.dsn(), "password": PASSWORD, "create_schema": True, "timeout": 10}
    fields.update(overrides)
    exporter: ClickHouseExporter = make_exporter(**fields)
    return exporter


def minute_batch(minute: int, *sizes: int) -> FlowBatch:
    return FlowBatch(flows=[
        make_flow("out", nbytes=n, end_ns=T0_NS + (minute * 60 + i + 1) * SECOND) for i, n in enumerate(sizes)
    ])


def totals(ch: ClickHouseHTTP) -> tuple[int, int]:
    ((nbytes, rows),) = ch.query("SELECT sum(bytes), count() FROM default.network_flows_0 FINAL")
    return int(nbytes or 0), int(rows)


def test_rows_go_in_over_http_with_every_compression(ch: ClickHouseHTTP, make_exporter: Any) -> None:
    expected = 0
    for minute, compression in enumerate(("lz4", "zstd", "gzip", "none")):
        exporter = http_exporter(make_exporter, ch, compression=compression)
        batch = minute_batch(minute, 1000 + minute, 7)
        exporter.consume(batch)
        assert wait_until(lambda e=exporter: e.m_blocks.value() == 1), compression
        expected += sum(f.bytes for f in batch.flows)
    assert totals(ch) == (expected, 4)
    rows = ch.query("SELECT localPod, remotePod, direction, toString(localIPv4), intervalSeconds "
                    "FROM default.network_flows_0 FINAL LIMIT 1")
    assert rows == [["api-1", "web-1", "out", "10.0.0.1", 60]]
    stats = ch.stats()
    assert stats["inserts"] == 4
    assert all(stats["insert_tokens"]), "every insert carries insert_deduplication_token in the URL"


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "gzip"])
def test_the_server_reads_every_compressed_frame_of_a_body(ch: ClickHouseHTTP, encoding: str) -> None:
    """A client may compress a streamed insert chunk by chunk (clickhouse-connect's Native inserts do): a
    server reads all the frames, and so must this stand-in, or it loses rows without an error."""
    import gzip

    import lz4.frame

    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        from backports import zstd  # type: ignore[import-not-found,no-redef]

    compress = {"lz4": lz4.frame.compress, "zstd": zstd.compress, "gzip": gzip.compress}[encoding]
    ch.query("CREATE TABLE IF NOT EXISTS default.frames (x UInt32) ENGINE = MergeTree ORDER BY x")
    body = compress(b"1\n2\n") + compress(b"3\n") + compress(b"4\n")
    query = urllib.parse.quote("INSERT INTO default.frames FORMAT TSV")
    request = urllib.request.Request(f"{ch.url}/?query={query}", data=body, method="POST", headers={
        "Content-Encoding": encoding,
        "Authorization": "Basic " + base64.b64encode(f"default:{PASSWORD}".encode()).decode(),
    })
    urllib.request.urlopen(request, timeout=30).read()
    assert ch.query("SELECT count(), sum(x) FROM default.frames") == [[4, 10]]


def test_5xx_answers_are_retried_and_the_block_stored_once(ch: ClickHouseHTTP, make_exporter: Any) -> None:
    ch.fault("status", count=4, match="INSERT", status=503, code=202, message="Too many simultaneous queries")
    ch.fault("status", count=2, match="INSERT", status=500, code=252, message="Too many parts (TOO_MANY_PARTS)")
    exporter = http_exporter(make_exporter, ch)
    exporter.consume(minute_batch(0, 100, 20, 3))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    assert totals(ch) == (123, 1)
    assert ch.stats()["faults_applied"] == 6
    assert exporter.m_failures.value(kind="retryable") >= 2  # the driver retries 503 itself, once
    assert exporter.m_failures.value(kind="permanent") == 0
    assert exporter.m_dropped.value(reason="permanent_error") == 0


def test_a_connection_dropped_before_the_insert_is_retried(ch: ClickHouseHTTP, make_exporter: Any) -> None:
    ch.fault("drop", count=3, match="INSERT")
    exporter = http_exporter(make_exporter, ch)
    exporter.consume(minute_batch(0, 5, 6))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    assert totals(ch) == (11, 1)
    assert ch.stats()["faults_applied"] == 3


@pytest.mark.parametrize(("window", "stored"), [(1000, 123), (0, 246)])
def test_an_insert_whose_answer_was_lost_counts_once_by_its_token(
    ch: ClickHouseHTTP, make_exporter: Any, window: int, stored: int
) -> None:
    # The server executes the insert, then the connection is reset: the client
    # cannot know it worked and sends it again. window=0 is the control: without
    # the table's deduplication window the same fault doubles the bytes.
    ch.fault("drop_after", count=1, match="INSERT")
    exporter = http_exporter(make_exporter, ch, deduplication_window=window)
    exporter.consume(minute_batch(0, 100, 20, 3))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    tokens = ch.stats()["insert_tokens"]
    assert len(tokens) == 2 and tokens[0] == tokens[1], tokens
    assert totals(ch)[0] == stored


def test_wrong_credentials_keep_the_block_until_they_are_fixed(
    ch: ClickHouseHTTP, make_exporter: Any, tmp_path: Path
) -> None:
    # AUTHENTICATION_FAILED is retried, not dropped: a rotated Secret is mounted
    # again within minutes, and dropping would lose what the agents sent meanwhile.
    secret = tmp_path / "password"
    secret.write_text("wrong\n")
    exporter = http_exporter(make_exporter, ch, password="", password_file=str(secret))
    exporter.consume(minute_batch(0, 40, 2))
    assert wait_until(lambda: exporter.m_failures.value(kind="retryable") >= 2)
    assert exporter.m_blocks.value() == 0
    assert exporter.m_dropped.value(reason="permanent_error") == 0
    secret.write_text(PASSWORD + "\n")  # the Secret is fixed; read again on the next connect
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    assert totals(ch) == (42, 1)


def test_a_table_that_does_not_match_refuses_the_start(ch: ClickHouseHTTP, make_exporter: Any) -> None:
    ch.query("CREATE TABLE default.network_flows_0 (date Date, bytes String) ENGINE = MergeTree ORDER BY date")
    with pytest.raises(SchemaError, match="column bytes is String, expected UInt64"):
        http_exporter(make_exporter, ch, create_schema=False)


def test_a_table_changed_under_a_running_exporter_is_a_permanent_error(
    ch: ClickHouseHTTP, make_exporter: Any
) -> None:
    exporter = http_exporter(make_exporter, ch)
    exporter.consume(minute_batch(0, 1))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    # Someone replaces the table with one that lacks most columns.
    ch.query("DROP TABLE default.network_flows_0")
    ch.query("CREATE TABLE default.network_flows_0 (date Date, bytes UInt64) ENGINE = MergeTree ORDER BY date")
    exporter.consume(minute_batch(1, 2, 3))
    assert wait_until(lambda: exporter.m_dropped.value(reason="permanent_error") == 2)
    # >= 1: a block that fails permanently may be split to find the rows at fault.
    assert exporter.m_failures.value(kind="permanent") >= 1
    assert ch.query("SELECT count() FROM default.network_flows_0") == [[0]]  # nothing half-written


def test_https_with_a_private_ca(tmp_path: Path, make_exporter: Any) -> None:
    tls = make_tls(tmp_path / "tls")
    with clickhouse_http(tmp_path / "server", password=PASSWORD, tls=(tls.server_cert, tls.server_key),
                         ca_file=tls.ca) as ch:
        assert ch.dsn().startswith("https://")
        exporter = http_exporter(make_exporter, ch, tls={"ca_file": str(tls.ca)})
        exporter.consume(minute_batch(0, 9, 1))
        assert wait_until(lambda: exporter.m_blocks.value() == 1)
        assert totals(ch) == (10, 1)


def test_https_with_an_unknown_ca_is_not_trusted(tmp_path: Path, make_exporter: Any) -> None:
    tls = make_tls(tmp_path / "tls")
    with clickhouse_http(tmp_path / "server", password=PASSWORD, tls=(tls.server_cert, tls.server_key),
                         ca_file=tls.ca) as ch:
        exporter = http_exporter(make_exporter, ch, tls={"ca_file": str(tls.other_ca)})
        exporter.consume(minute_batch(0, 9))
        assert wait_until(lambda: exporter.m_failures.value(kind="retryable") >= 1)
        assert ch.stats()["inserts"] == 0
        assert exporter.m_blocks.value() == 0


def test_failover_to_the_next_endpoint_when_the_first_is_down(ch: ClickHouseHTTP, make_exporter: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}/default"  # nothing listens there
    exporter = http_exporter(make_exporter, ch, endpoint=dead, failover_endpoints=[ch.dsn()], connect_timeout=2)
    exporter.consume(minute_batch(0, 30, 12))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    assert totals(ch) == (42, 1)


def test_failover_mid_run_loses_and_doubles_nothing(tmp_path: Path, make_exporter: Any) -> None:
    # Two servers (own data each, so each one's share is visible); the primary
    # dies after the first block, the rest goes to the second.
    with clickhouse_http(tmp_path / "a", password=PASSWORD) as a, \
            clickhouse_http(tmp_path / "b", password=PASSWORD) as b:
        exporter = http_exporter(make_exporter, a, failover_endpoints=[b.dsn()], connect_timeout=2)
        # The second server needs the table too: create it there the same way.
        http_exporter(make_exporter, b)
        exporter.consume(minute_batch(0, 1, 2))
        assert wait_until(lambda: exporter.m_blocks.value() == 1)
        a.stop()
        exporter.consume(minute_batch(1, 10, 20))
        exporter.consume(minute_batch(2, 100, 200))
        assert wait_until(lambda: exporter.m_blocks.value() == 3)
        assert totals(b) == (330, 2)
        assert exporter.m_dropped.value(reason="permanent_error") == 0


def test_many_blocks_through_mixed_faults_are_stored_exactly_once(ch: ClickHouseHTTP, make_exporter: Any) -> None:
    # Every kind of fault the endpoint makes, interleaved over twelve blocks.
    ch.fault("status", count=2, match="INSERT", status=503, code=202)
    ch.fault("drop_after", count=3, match="INSERT")
    ch.fault("drop", count=2, match="INSERT")
    ch.fault("status", count=2, match="INSERT", status=500, code=999, message="Keeper session expired")
    ch.fault("drop_after", count=2, match="INSERT")
    exporter = http_exporter(make_exporter, ch)
    batches = [minute_batch(m, *(7 * m + k for k in range(1, 4))) for m in range(12)]
    for batch in batches:
        exporter.consume(batch)
    assert wait_until(lambda: exporter.m_blocks.value() == len(batches), timeout=60)
    assert totals(ch) == (sum(f.bytes for b in batches for f in b.flows), len(batches))
    assert ch.stats()["faults_applied"] == 11
    assert exporter.m_dropped.value(reason="permanent_error") == 0


def test_async_inserts_over_http_count_a_lost_answer_once(ch: ClickHouseHTTP, make_exporter: Any) -> None:
    # async_insert: true sends wait_for_async_insert=1 and async_insert_deduplicate=1 with the token.
    ch.fault("drop_after", count=1, match="INSERT")
    exporter = http_exporter(make_exporter, ch, async_insert=True)
    exporter.consume(minute_batch(0, 100, 20, 3))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    tokens = ch.stats()["insert_tokens"]
    assert len(tokens) == 2 and tokens[0] == tokens[1]
    assert totals(ch) == (123, 1)


def _raw(ch: ClickHouseHTTP, query: str, *, body: bytes = b"", headers: dict[str, str] | None = None,
         auth: tuple[str, str] | None = ("default", PASSWORD)) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"{ch.url}/?{urllib.parse.urlencode({'query': query})}", data=body or None,
                                     headers=dict(headers or {}), method="POST")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_the_endpoint_answers_as_clickhouse_does(ch: ClickHouseHTTP) -> None:
    # The fixture's own fidelity: what the client relies on, as a server sends it.
    status, headers, body = _raw(ch, "SELECT 1 + 1")
    assert (status, body) == (200, b"2\n")
    assert headers["X-ClickHouse-Format"] == "TabSeparated" and "X-ClickHouse-Query-Id" in headers
    status, headers, body = _raw(ch, "SELECT 1", auth=("default", "nope"))
    assert status == 401 and headers["X-ClickHouse-Exception-Code"] == "516"
    assert body.startswith(b"Code: 516. DB::Exception:")
    status, headers, body = _raw(ch, "SELECT 1", auth=None,
                                 headers={"X-ClickHouse-User": "default", "X-ClickHouse-Key": PASSWORD})
    assert status == 200
    status, headers, body = _raw(ch, "SELECT * FROM default.no_such_table")
    assert status == 404 and headers["X-ClickHouse-Exception-Code"] == "60"
    # The query parameter and the body are one statement: INSERT's data follows in the body.
    assert _raw(ch, "CREATE TABLE default.t (x UInt8) ENGINE = MergeTree ORDER BY x")[0] == 200
    assert _raw(ch, "INSERT INTO default.t FORMAT TSV", body=b"1\n2\n")[0] == 200
    assert _raw(ch, "SELECT sum(x) FROM default.t")[2] == b"3\n"


def test_replicated_cluster_mode_sends_inserts_synchronously_to_the_shards(ch: ClickHouseHTTP) -> None:
    def setting(**cluster: Any) -> str:
        config = ClickHouseConfig(endpoint=ch.dsn(), password=PASSWORD, cluster=cluster or {"mode": "single"})
        conn = connect(config)
        try:
            return str(conn.client.query("SELECT getSetting('insert_distributed_sync')").result_rows[0][0])
        finally:
            conn.close()

    # Every request of the exporter's client carries it (a Distributed insert then waits for the shards).
    assert setting(mode="replicated", name="metering") in ("1", "True", "true")
    assert setting() in ("0", "False", "false")


def test_the_exporter_creates_the_cloud_layout(ch: ClickHouseHTTP, make_exporter: Any) -> None:
    # Cloud: the shipped DDL without non_replicated_deduplication_window (Cloud's engine dedups).
    exporter = http_exporter(make_exporter, ch, cluster={"mode": "cloud"})
    exporter.consume(minute_batch(0, 5))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    ((engine,),) = ch.query("SELECT engine_full FROM system.tables WHERE name = 'network_flows_0'")
    assert "non_replicated_deduplication_window" not in engine
