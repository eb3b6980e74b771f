"""The exporter as a component: lifecycle, config, credentials, error classes, plugin surface."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError, ProgrammingError
from pydantic import ValidationError

from kubenetmon.component import Kind
from kubenetmon.errors import PermanentError, RetryableError
from kubenetmon.exporters.clickhouse import ClickHouseConfig, classify_error, factory
from kubenetmon.exporters.clickhouse.connection import Connection, parse_endpoint, read_secret
from kubenetmon.exporters.clickhouse.schema import SchemaError
from kubenetmon.flows import FlowBatch
from kubenetmon.plugins import build_plugin_manager, load_components
from kubenetmon.testing import check_lifecycle, create_component, create_settings
from tests.exporters.clickhouse.clickhouse_testkit import IDENTITY, SECOND, T0_NS, make_flow, wait_until


def test_exporter_honours_the_lifecycle_contract(chdb_dsn: str) -> None:
    config = ClickHouseConfig(endpoint=chdb_dsn)
    check_lifecycle(create_component(factory, config))


def test_shutdown_without_start_is_a_noop(chdb_dsn: str) -> None:
    exporter = create_component(factory, ClickHouseConfig(endpoint=chdb_dsn))
    exporter.shutdown(1)
    exporter.shutdown(1)


def test_shutdown_flushes_every_queued_batch(db: Connection, make_exporter: Any) -> None:
    # Defaults: blocks close on the minute; shutdown must not wait for that or lose them.
    exporter = make_exporter(batch={"max_wait": 60, "align": True})
    for minute in range(5):
        exporter.consume(FlowBatch(flows=[make_flow("in", nbytes=minute + 1, end_ns=T0_NS + minute * 60 * SECOND + 1)]))
    exporter.shutdown(30)
    assert db.client.query("SELECT sum(bytes), count() FROM default.network_flows_0").result_rows == [(15, 5)]
    assert exporter.m_rows.value() == 5


def test_async_insert_waits_for_the_flush_and_deduplicates(make_exporter: Any) -> None:
    exporter = make_exporter(async_insert=True, start=False)
    assert exporter.insert_settings("b1") == {
        "insert_deduplication_token": "b1",
        "async_insert": 1,
        "wait_for_async_insert": 1,
        "async_insert_deduplicate": 1,
    }
    assert make_exporter(start=False).insert_settings("b2") == {"insert_deduplication_token": "b2"}


def test_async_insert_delivers_into_chdb(db: Connection, make_exporter: Any) -> None:
    exporter = make_exporter(async_insert=True)
    exporter.consume(FlowBatch(flows=[make_flow("out", nbytes=77)]))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    assert db.client.query("SELECT sum(bytes) FROM default.network_flows_0").result_rows == [(77,)]


def test_raw_records_without_attribution_are_counted_not_written(db: Connection, make_exporter: Any) -> None:
    from tests.flowgen import record

    exporter = make_exporter()
    exporter.consume(FlowBatch(records=[record(1), record(2)], flows=[make_flow()]))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    assert exporter.m_rejected.value(reason="unattributed") == 2


def test_unreachable_server_at_start_does_not_stop_the_gateway() -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ClickHouseConfig.model_validate({
        "endpoint": f"http://127.0.0.1:{port}/default",
        "connect_timeout": 1,
        "batch": {"max_wait": 0},
        "retry_on_failure": {"initial_interval": 0.05, "max_interval": 0.1},
    })
    exporter = factory.create(create_settings(Kind.EXPORTER, "clickhouse/down", identity=IDENTITY), config)
    check_lifecycle(exporter)
    exporter = factory.create(create_settings(Kind.EXPORTER, "clickhouse/down", identity=IDENTITY), config)
    from kubenetmon.testing import StaticHost

    exporter.start(StaticHost())
    exporter.consume(FlowBatch(flows=[make_flow()]))
    assert wait_until(lambda: exporter.m_failures.value(kind="retryable") >= 2)
    exporter.shutdown(0.5)
    assert exporter.m_dropped.labels(reason="shutdown")._value.get() == 1  # memory queue: counted, not silent


def test_defaults_batch_whole_minutes_and_create_the_schema_only_for_chdb() -> None:
    server = ClickHouseConfig()
    assert (server.batch.max_wait, server.batch.align) == (60.0, True)
    assert server.creates_schema() is False
    assert ClickHouseConfig(endpoint="chdb:///var/lib/kubenetmon").creates_schema() is True
    assert ClickHouseConfig(endpoint="chdb:///x", create_schema=False).creates_schema() is False
    assert (server.interval_seconds, server.ipv6, server.aggregate) == (60, "write", True)
    assert server.retry_on_failure.max_elapsed_time == 3600


def test_setting_one_batch_or_retry_key_keeps_the_other_defaults() -> None:
    config = ClickHouseConfig.model_validate(
        {"batch": {"max_flows": 5000}, "retry_on_failure": {"initial_interval": 1}}
    )
    assert (config.batch.max_flows, config.batch.max_wait, config.batch.align) == (5000, 60.0, True)
    assert (config.retry_on_failure.initial_interval, config.retry_on_failure.max_elapsed_time) == (1, 3600)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"endpoint": "tcp://ch:9000"}, "not a supported endpoint"),
        ({"table": "flows; DROP TABLE x"}, "not a plain identifier"),
        ({"database": "1db"}, "not a plain identifier"),
        ({"ipv6": "keep"}, "'write' or 'drop'"),
        ({"tls": {"key_file": "k.pem"}}, "key_file is set but cert_file is not"),
        ({"interval_seconds": 0}, "greater than 0"),
    ],
)
def test_bad_config_is_rejected_with_a_clear_message(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ClickHouseConfig.model_validate(fields)


def test_endpoints_parse_into_targets() -> None:
    https = parse_endpoint("https://writer:s3cr%40t@ch.example:9443/metering")
    assert (https.host, https.port, https.secure, https.database) == ("ch.example", 9443, True, "metering")
    assert (https.username, https.password) == ("writer", "s3cr@t")
    assert parse_endpoint("http://ch").port == 8123
    assert parse_endpoint("https://ch").port == 8443
    assert parse_endpoint("chdb:///var/lib/x/").path == "/var/lib/x"
    assert parse_endpoint("chdb://memory").path == ":memory:"
    with pytest.raises(ValueError, match="three slashes"):
        parse_endpoint("chdb://relative/path")


def test_credentials_come_from_config_then_file_then_env_trimmed(tmp_path: Path, monkeypatch: Any) -> None:
    secret = tmp_path / "password"
    secret.write_text("hunter2\n")  # mounted Secrets end with a newline
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", " from-env \n")
    assert read_secret(" inline ", str(secret), "CLICKHOUSE_PASSWORD", "dsn") == "inline"
    assert read_secret("", str(secret), "CLICKHOUSE_PASSWORD", "dsn") == "hunter2"
    assert read_secret("", "", "CLICKHOUSE_PASSWORD", "dsn") == "from-env"
    monkeypatch.delenv("CLICKHOUSE_PASSWORD")
    assert read_secret("", "", "CLICKHOUSE_PASSWORD", "dsn") == "dsn"
    with pytest.raises(Exception, match="cannot read credentials file"):
        read_secret("", str(tmp_path / "missing"), "X", "")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (OperationalError("connection refused"), RetryableError),
        (DatabaseError("timeout", code=159), RetryableError),
        (DatabaseError("too many parts", code=252), RetryableError),
        (DatabaseError("HTTP 503"), RetryableError),
        (DatabaseError("no such column", code=16), PermanentError),
        (DatabaseError("type mismatch", code=53), PermanentError),
        (DatabaseError("unknown table", code=60), PermanentError),
        (ProgrammingError("The client has been closed"), RetryableError),
        (DataError("Invalid None value in non-Nullable column"), PermanentError),
        (TypeError("'str' object cannot be interpreted as an integer"), PermanentError),
        (SchemaError("column x is missing"), PermanentError),
        (ConnectionResetError(), RetryableError),
    ],
)
def test_errors_are_classified_as_retryable_or_permanent(error: Exception, kind: type[Exception]) -> None:
    assert isinstance(classify_error(error), kind)


def test_exporter_is_a_builtin_plugin_with_the_report_command() -> None:
    import argparse

    pm = build_plugin_manager(load_entry_points=False)
    registry = load_components(pm)
    entry = registry.get(Kind.EXPORTER, "clickhouse")
    assert entry is not None
    assert entry.plugin == "kubenetmon.exporters.clickhouse"
    parser = argparse.ArgumentParser()
    pm.hook.kubenetmon_register_commands(subparsers=parser.add_subparsers())
    args = parser.parse_args(["report", "by-class", "--endpoint", "/tmp/x"])
    assert callable(args.func)


def test_importing_the_plugin_does_not_import_chdb() -> None:
    import subprocess
    import sys

    code = (
        "import sys, kubenetmon.exporters.clickhouse, kubenetmon.report; "
        "from kubenetmon.plugins import build_plugin_manager, load_components; "
        "load_components(build_plugin_manager(load_entry_points=False)); "
        "print('chdb' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
