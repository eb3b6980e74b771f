"""The ``network_flows_0`` table: the shipped DDL, creating it, and checking it.

``network_flows_0.sql`` next to this module is a byte-for-byte copy of
``config/network_flows_0.sql`` (the original project's DDL; a test keeps them
equal). Creating the table substitutes the database and table names and, for
non-replicated engines, adds ``non_replicated_deduplication_window`` — without
it a MergeTree ignores ``insert_deduplication_token`` and a retried block
whose acknowledgement was lost would be counted twice.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from clickhouse_connect.driver.binding import quote_identifier

from kubenetmon.errors import KubenetmonError
from kubenetmon.exporters.clickhouse.config import ClusterConfig

__all__ = [
    "COLUMNS", "SchemaError", "check_table", "create_table", "render_cluster_ddl", "render_ddl",
    "render_statements", "shipped_ddl",
]


class SchemaError(KubenetmonError):
    """The table is missing or does not have the columns we write."""


# What we write, in DDL order, with the types as DESCRIBE TABLE spells them.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("date", "Date"),
    ("intervalStartTime", "DateTime"),
    ("intervalSeconds", "UInt16"),
    ("environment", "LowCardinality(String)"),
    ("proto", "LowCardinality(String)"),
    ("connectionClass", "LowCardinality(String)"),
    ("connectionFlags", "Map(LowCardinality(String), Bool)"),
    ("direction", "Enum8('out' = 1, 'in' = 2)"),
    ("localCloud", "LowCardinality(String)"),
    ("localRegion", "LowCardinality(String)"),
    ("localCluster", "LowCardinality(String)"),
    ("localCell", "LowCardinality(String)"),
    ("localAvailabilityZone", "LowCardinality(String)"),
    ("localNode", "String"),
    ("localInstanceID", "String"),
    ("localNamespace", "LowCardinality(String)"),
    ("localPod", "String"),
    ("localIPv4", "IPv4"),
    ("localPort", "UInt16"),
    ("localApp", "String"),
    ("remoteCloud", "LowCardinality(String)"),
    ("remoteRegion", "LowCardinality(String)"),
    ("remoteCluster", "LowCardinality(String)"),
    ("remoteCell", "LowCardinality(String)"),
    ("remoteAvailabilityZone", "LowCardinality(String)"),
    ("remoteNode", "String"),
    ("remoteInstanceID", "String"),
    ("remoteNamespace", "LowCardinality(String)"),
    ("remotePod", "String"),
    ("remoteIPv4", "IPv4"),
    ("remotePort", "UInt16"),
    ("remoteApp", "String"),
    ("remoteCloudService", "LowCardinality(String)"),
    ("bytes", "UInt64"),
    ("packets", "UInt64"),
)

_CREATE = re.compile(r"^\s*CREATE TABLE\s+default\.network_flows_0\b")
_ENGINE = re.compile(r"^ENGINE\s*=\s*(\w+)", re.M)
_SETTINGS = re.compile(r"^SETTINGS\s+.*$", re.M)
_ORDER_BY = re.compile(r"^ORDER BY \((.*)\)\s*$", re.M)
# Identifiers of an expression that are not function names (not followed by "(").
_KEY_COLUMN = re.compile(r"\b([A-Za-z_]\w*)\b(?!\s*\()")
_ENGINE_CLAUSE = re.compile(r"^ENGINE\s*=\s*(?P<engine>\w+)\((?P<args>.*)\)\s*$", re.M)


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def shipped_ddl() -> str:
    """The original DDL exactly as shipped."""
    return resources.files(__package__).joinpath("network_flows_0.sql").read_text(encoding="utf-8")


def render_ddl(database: str, table: str, deduplication_window: int = 1000) -> str:
    """The shipped DDL for ``database.table``, ``IF NOT EXISTS``, with deduplication enabled."""
    ddl = shipped_ddl().strip().rstrip(";").rstrip()
    target = f"{quote_identifier(database)}.{quote_identifier(table)}"
    ddl, n = _CREATE.subn(f"CREATE TABLE IF NOT EXISTS {target}", ddl, count=1)
    if n != 1:
        raise SchemaError("the shipped DDL does not start with CREATE TABLE default.network_flows_0")
    engine = _ENGINE.search(ddl)
    if engine and not engine.group(1).startswith("Replicated") and deduplication_window > 0:
        setting = f"non_replicated_deduplication_window = {int(deduplication_window)}"
        if _SETTINGS.search(ddl):
            ddl = _SETTINGS.sub(lambda m: f"{m.group(0)}, {setting}", ddl, count=1)
        else:
            ddl += f"\nSETTINGS {setting}"
    return ddl


def render_cluster_ddl(database: str, table: str, cluster: ClusterConfig) -> list[str]:
    """The statements that create the table on a replicated cluster, in order.

    The shipped table becomes ``local_table`` on every server (``ON CLUSTER``),
    a ``ReplicatedSummingMergeTree`` with the same columns, keys, TTL and
    settings — Replicated engines deduplicate a retried insert (same
    ``insert_deduplication_token``) across replicas through Keeper, so no
    ``non_replicated_deduplication_window``. ``table`` itself, the name users
    query, becomes a ``Distributed`` table over the local ones, sharded by a
    function of sorting-key columns only: rows SummingMergeTree would merge
    always meet on one shard.
    """
    if cluster.mode != "replicated":
        raise ValueError(f"cluster mode {cluster.mode!r} has no cluster DDL; use render_ddl")
    on = f"ON CLUSTER {quote_identifier(cluster.name)}"
    local = cluster.local_table or f"{table}_local"
    ddl = render_ddl(database, local, deduplication_window=0)
    order_by = _ORDER_BY.search(ddl)
    sorting = set(re.findall(r"\w+", order_by.group(1))) if order_by else set()
    outside = sorted(set(_KEY_COLUMN.findall(cluster.sharding_key)) - sorting)
    if outside:
        raise SchemaError(
            f"sharding_key {cluster.sharding_key!r} uses {', '.join(outside)}, not in the table's ORDER BY: rows "
            "that SummingMergeTree must merge could land on different shards; use sorting-key columns only, "
            "e.g. cityHash64(localPod, remotePod)"
        )
    ddl = ddl.replace(
        f"{quote_identifier(database)}.{quote_identifier(local)}",
        f"{quote_identifier(database)}.{quote_identifier(local)} {on}", 1,
    )
    engine = _ENGINE_CLAUSE.search(ddl)
    if engine is None or engine.group("engine") != "SummingMergeTree":
        raise SchemaError("the shipped DDL's engine is not SummingMergeTree((...)); cannot make it Replicated")
    replicated = (
        f"ENGINE = ReplicatedSummingMergeTree({_sql_string(cluster.zookeeper_path)}, "
        f"{_sql_string(cluster.replica_name)}, {engine.group('args')})"
    )
    ddl = ddl[: engine.start()] + replicated + ddl[engine.end():]
    distributed = (
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(database)}.{quote_identifier(table)} {on}\n"
        f"AS {quote_identifier(database)}.{quote_identifier(local)}\n"
        f"ENGINE = Distributed({quote_identifier(cluster.name)}, {quote_identifier(database)}, "
        f"{quote_identifier(local)}, {cluster.sharding_key})"
    )
    return [f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)} {on}", ddl, distributed]


def render_statements(database: str, table: str, deduplication_window: int,
                      cluster: ClusterConfig | None = None) -> list[str]:
    """Every statement :func:`create_table` runs for this layout, in order."""
    mode = cluster.mode if cluster is not None else "single"
    if cluster is not None and mode == "replicated":
        return render_cluster_ddl(database, table, cluster)
    # ClickHouse Cloud makes every MergeTree its shared, replicated engine, which
    # deduplicates by itself; the non-replicated setting is not ours to add there.
    window = 0 if mode == "cloud" else deduplication_window
    return [f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}", render_ddl(database, table, window)]


def create_table(client: Any, database: str, table: str, deduplication_window: int,
                 cluster: ClusterConfig | None = None) -> None:
    """Create the database and the table(s) when missing (idempotent)."""
    for statement in render_statements(database, table, deduplication_window, cluster):
        client.command(statement)


def _normalise(type_name: str) -> str:
    return type_name.replace(" ", "")


def check_table(client: Any, database: str, table: str) -> list[str]:
    """Compare the table with :data:`COLUMNS`; raise :class:`SchemaError` listing every mismatch.

    Returns warnings that do not stop writing (e.g. deduplication disabled).
    Extra columns are fine: they take their defaults.
    """
    params = {"db": database, "table": table}
    rows = client.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {table:String}",
        parameters=params,
    ).result_rows
    name = f"{database}.{table}"
    if not rows:
        raise SchemaError(
            f"table {name} does not exist: create it with config/network_flows_0.sql (with that name) "
            "or set create_schema: true"
        )
    actual = {str(r[0]): str(r[1]) for r in rows}
    problems = []
    for column, expected in COLUMNS:
        got = actual.get(column)
        if got is None:
            problems.append(f"column {column} is missing (expected {expected})")
        elif _normalise(got) != _normalise(expected):
            problems.append(f"column {column} is {got}, expected {expected}")
    if problems:
        raise SchemaError(
            f"table {name} does not match what kubenetmon writes: " + "; ".join(problems)
            + ". Recreate it from config/network_flows_0.sql or point the exporter at another table"
        )
    warnings = []
    info = client.query(
        "SELECT engine, engine_full FROM system.tables WHERE database = {db:String} AND name = {table:String}",
        parameters=params,
    ).result_rows
    if info:
        engine, engine_full = str(info[0][0]), str(info[0][1])
        # Replicated and Cloud's Shared engines deduplicate by themselves; a Distributed
        # table forwards to local tables that do (render_cluster_ddl makes them Replicated).
        if not engine.startswith(("Replicated", "Shared", "Distributed")) and not re.search(
            r"non_replicated_deduplication_window\s*=\s*[1-9]", engine_full
        ):
            warnings.append(
                f"table {name} ({engine}) has no non_replicated_deduplication_window: a retried insert whose "
                "acknowledgement was lost will be counted twice; ALTER TABLE ... MODIFY SETTING "
                "non_replicated_deduplication_window = 1000"
            )
    return warnings
