"""The exporter inside a real Service: config → plugins → pipeline → chDB."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from kubenetmon.config import validate
from kubenetmon.exporters.clickhouse import ClickHouseConfig
from kubenetmon.exporters.clickhouse.connection import connect
from kubenetmon.flows import FlowBatch
from kubenetmon.pipeline import Service
from kubenetmon.plugins import build_plugin_manager, load_components
from tests.exporters.clickhouse.clickhouse_testkit import make_flow
from tests.pipeline.recording import RecordingPlugin


def test_two_exporters_on_one_chdb_path_in_a_service_write_their_own_tables(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'chdb'}"
    raw = {
        "receivers": {"replay": {}},
        "processors": {"tag": {"flag": "NAT_GATEWAY"}},
        "exporters": {
            # Minute-aligned blocks (the default): the service's shutdown must flush them.
            "clickhouse/primary": {"endpoint": dsn},
            "clickhouse/copy": {"endpoint": dsn, "database": "archive", "table": "flows_copy",
                                "sending_queue": {"storage": "persistent", "directory": str(tmp_path / "q")}},
        },
        "service": {
            "identity": {"cloud": "gcp", "region": "Europe North1", "cluster": "k1", "environment": "staging"},
            "pipelines": {"flows": {"receivers": ["replay"], "processors": ["tag"],
                                    "exporters": ["clickhouse/primary", "clickhouse/copy"]}},
            "telemetry": {"metrics": {"address": ""}},
        },
    }
    plugin = RecordingPlugin()
    registry = load_components(build_plugin_manager(load_entry_points=False, extra_plugins=[plugin]))
    service = Service(validate(raw, registry), registry, CollectorRegistry())
    service.start()
    try:
        for i in range(3):
            plugin.receivers["replay"].emit(FlowBatch(flows=[make_flow("out", nbytes=10 + i), make_flow("in")]))
    finally:
        service.shutdown()
    conn = connect(ClickHouseConfig(endpoint=dsn))
    try:
        for table in ("default.network_flows_0", "archive.flows_copy"):
            rows = conn.client.query(
                f"SELECT direction, sum(bytes), any(connectionFlags), any(localCloud), any(localRegion), "
                f"any(environment) FROM {table} GROUP BY direction ORDER BY direction"
            ).result_rows
            assert rows == [
                ("out", 33, {"NAT_GATEWAY": True}, "gcp", "europenorth1", "staging"),
                ("in", 300, {"NAT_GATEWAY": True}, "gcp", "europenorth1", "staging"),
            ], table
            assert conn.client.command(f"SELECT count() FROM {table} FINAL") == 2
    finally:
        conn.close()
