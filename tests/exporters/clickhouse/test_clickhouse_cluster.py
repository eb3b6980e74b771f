"""Cluster and Cloud layouts: config validation, and the DDL as chDB's own parser reads it.

chDB cannot execute ``ON CLUSTER`` (no Keeper, no remote_servers), so the
statements are parsed (``EXPLAIN AST``) and formatted (``formatQuery``) by the
engine: a typo in the generated DDL fails here, not on a user's cluster.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kubenetmon.exporters.clickhouse.config import ClickHouseConfig, ClusterConfig
from kubenetmon.exporters.clickhouse.connection import Connection
from kubenetmon.exporters.clickhouse.schema import (
    COLUMNS,
    SchemaError,
    check_table,
    create_table,
    render_cluster_ddl,
    render_ddl,
    render_statements,
)
from kubenetmon.exporters.otlp import OtlpExporterConfig

REPLICATED = ClusterConfig(mode="replicated", name="metering")
SCALING_DOC = Path(__file__).resolve().parents[3] / "docs" / "scaling.md"


def ast(db: Connection, statement: str) -> str:
    rows = db.client.query(f"EXPLAIN AST {statement}").result_rows
    return "\n".join(str(r[0]) for r in rows)


def formatted(db: Connection, statement: str) -> str:
    return str(db.client.query("SELECT formatQuery({q:String})", parameters={"q": statement}).result_rows[0][0])


# --- configuration -----------------------------------------------------------------------


def test_replicated_mode_needs_the_cluster_name() -> None:
    with pytest.raises(ValidationError, match="name is required when mode is replicated"):
        ClickHouseConfig(endpoint="https://ch:8443/default", cluster={"mode": "replicated"})


def test_cluster_name_only_applies_to_replicated_mode() -> None:
    with pytest.raises(ValidationError, match="only apply to mode: replicated"):
        ClickHouseConfig(endpoint="https://ch:8443/default", cluster={"mode": "cloud", "name": "x"})


def test_cluster_and_failover_need_a_server_endpoint() -> None:
    with pytest.raises(ValidationError, match="apply to ClickHouse servers"):
        ClickHouseConfig(endpoint="chdb:///var/lib/kubenetmon", cluster={"mode": "cloud"})
    with pytest.raises(ValidationError, match="apply to ClickHouse servers"):
        ClickHouseConfig(endpoint="chdb:///var/lib/kubenetmon", failover_endpoints=["https://ch-1:8443/db"])
    with pytest.raises(ValidationError, match="is not a server endpoint"):
        ClickHouseConfig(endpoint="https://ch-0:8443/db", failover_endpoints=["chdb:///tmp/x"])


def test_cluster_name_is_a_plain_identifier() -> None:
    with pytest.raises(ValidationError, match="not a plain identifier"):
        ClusterConfig(mode="replicated", name="metering; DROP TABLE x")


def test_endpoints_are_tried_primary_first() -> None:
    config = ClickHouseConfig(
        endpoint="https://ch-0:8443/db", failover_endpoints=["https://ch-1:8443/db", "https://ch-2:8443/db"]
    )
    assert config.endpoints() == ["https://ch-0:8443/db", "https://ch-1:8443/db", "https://ch-2:8443/db"]


# --- the replicated layout ---------------------------------------------------------------


def test_cluster_ddl_parses_in_chdb(db: Connection) -> None:
    database, local, table = render_cluster_ddl("default", "network_flows_0", REPLICATED)
    assert "CreateQuery" in ast(db, database)
    local_ast = ast(db, local)
    assert "Function ReplicatedSummingMergeTree (children 1)" in local_ast
    assert "Identifier network_flows_0_local" in local_ast
    dist_ast = ast(db, table)
    assert "Function Distributed (children 1)" in dist_ast
    assert "Function cityHash64" in dist_ast
    # ON CLUSTER survives the engine's own formatting of every statement.
    for statement in (database, local, table):
        assert "ON CLUSTER metering" in formatted(db, statement)


def test_local_table_keeps_the_original_columns_keys_ttl_and_settings(db: Connection) -> None:
    _, local, _ = render_cluster_ddl("default", "network_flows_0", REPLICATED)
    original = formatted(db, render_ddl("default", "network_flows_0_local", deduplication_window=0))
    replicated = formatted(db, local)
    # The same statement except ON CLUSTER and the engine: Replicated with the summed columns kept.
    assert replicated.replace(" ON CLUSTER metering", "").replace(
        "ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', (bytes, packets))",
        "SummingMergeTree((bytes, packets))",
    ) == original
    assert "non_replicated_deduplication_window" not in local  # Replicated engines dedup through Keeper


def test_distributed_table_keeps_the_name_users_query(db: Connection) -> None:
    _, _, table = render_cluster_ddl("metering_db", "network_flows_0", REPLICATED)
    text = formatted(db, table)
    assert text.startswith("CREATE TABLE IF NOT EXISTS metering_db.network_flows_0 ON CLUSTER metering")
    assert "AS metering_db.network_flows_0_local" in text
    assert re.search(r"Distributed\(metering, metering_db, network_flows_0_local, cityHash64\(", text)


def test_default_sharding_key_uses_sorting_key_columns_only(db: Connection) -> None:
    key_ast = ast(db, f"SELECT {REPLICATED.sharding_key}")
    used = set(re.findall(r"Identifier (\w+)", key_ast)) - {"Native"}  # the client's FORMAT Native
    order_by = formatted(db, render_ddl("d", "t")).split("ORDER BY (", 1)[1].split(")", 1)[0]
    sorting = {c.strip() for c in order_by.split(",")}
    assert used and used <= sorting, used - sorting


def test_a_sharding_key_outside_the_sorting_key_is_refused() -> None:
    bad = ClusterConfig(mode="replicated", name="metering", sharding_key="cityHash64(localPod, bytes)")
    with pytest.raises(SchemaError, match="uses bytes, not in the table's ORDER BY"):
        render_cluster_ddl("default", "network_flows_0", bad)


def test_custom_local_table_and_keeper_path(db: Connection) -> None:
    cluster = ClusterConfig(mode="replicated", name="c2", local_table="flows_shard",
                            zookeeper_path="/kubenetmon/{shard}/flows", replica_name="{replica}-x")
    _, local, table = render_cluster_ddl("default", "network_flows_0", cluster)
    assert "`default`.`flows_shard` ON CLUSTER `c2`" in local
    assert "ReplicatedSummingMergeTree('/kubenetmon/{shard}/flows', '{replica}-x', (bytes, packets))" in local
    assert "Distributed(`c2`, `default`, `flows_shard`," in table
    ast(db, local)  # parses


# --- ClickHouse Cloud and a single server ------------------------------------------------


def test_cloud_layout_is_the_plain_ddl_without_the_non_replicated_setting(db: Connection) -> None:
    statements = render_statements("default", "network_flows_0", 1000, ClusterConfig(mode="cloud"))
    assert statements == [
        "CREATE DATABASE IF NOT EXISTS `default`",
        render_ddl("default", "network_flows_0", deduplication_window=0),
    ]
    assert "ON CLUSTER" not in "\n".join(statements)
    # And it runs as is on a single engine.
    create_table(db.client, "default", "network_flows_0", 1000, ClusterConfig(mode="cloud"))
    described = [(r[0], r[1]) for r in db.client.query("DESCRIBE TABLE default.network_flows_0").result_rows]
    assert described == list(COLUMNS)


def test_single_layout_is_unchanged(db: Connection) -> None:
    assert render_statements("default", "network_flows_0", 1000) == render_statements(
        "default", "network_flows_0", 1000, ClusterConfig()
    )
    create_table(db.client, "default", "network_flows_0", 1000, ClusterConfig())
    assert check_table(db.client, "default", "network_flows_0") == []



def test_scaling_doc_shows_exactly_the_ddl_we_run() -> None:
    doc = SCALING_DOC.read_text()
    for statement in render_cluster_ddl("default", "network_flows_0", REPLICATED):
        assert statement + ";" in doc, statement.splitlines()[0]


def test_scaling_doc_configurations_validate() -> None:
    blocks = [b.split("```")[0] for b in SCALING_DOC.read_text().split("```yaml\n")[1:]]
    assert len(blocks) == 2
    gateway, agent = yaml.safe_load_all(blocks[0])
    ClickHouseConfig.model_validate(gateway["exporters"]["clickhouse"])
    OtlpExporterConfig.model_validate(agent["exporters"]["otlp"])
    cluster = yaml.safe_load(blocks[1])["exporters"]["clickhouse"]
    assert ClickHouseConfig.model_validate(cluster).cluster.mode == "replicated"
