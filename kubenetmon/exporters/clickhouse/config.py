"""Config of the ``clickhouse`` exporter."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kubenetmon.exporterhelper import BatchConfig, ExporterHelperConfig, RetryConfig

__all__ = ["ClickHouseConfig", "ClusterConfig", "MinuteBatchConfig", "PatientRetryConfig", "TLSConfig"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _plain_identifier(value: str) -> str:
    """``value`` if it is empty or a plain SQL identifier; else a ValueError saying what is allowed."""
    if value and not _IDENTIFIER.match(value):
        raise ValueError(f"{value!r} is not a plain identifier (letters, digits and '_', not starting with a digit)")
    return value


class TLSConfig(BaseModel):
    """TLS towards a ClickHouse server (``https://`` endpoints)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: str = Field("", description="PEM file of the CA(s) that signed the server certificate; "
                         "empty uses the system trust store.")
    cert_file: str = Field("", description="Client certificate (PEM) for mutual TLS.")
    key_file: str = Field("", description="Private key of cert_file, when it is not inside cert_file.")
    insecure_skip_verify: bool = Field(
        False, description="Do not verify the server certificate. For tests only: it allows interception."
    )

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TLSConfig:
        if self.key_file and not self.cert_file:
            raise ValueError("key_file is set but cert_file is not; set both for mutual TLS")
        return self


class ClusterConfig(BaseModel):
    """How the table is laid out on a ClickHouse cluster (docs/scaling.md shows the exact DDL)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["single", "replicated", "cloud"] = Field(
        "single",
        description="single: one server (or chDB), the shipped DDL with non_replicated_deduplication_window. "
        "replicated: a self-managed cluster; tables created ON CLUSTER name as Replicated engines (local "
        "tables named local_table) under a Distributed table keeping the configured table name, inserts "
        "sent synchronously to the shards. cloud: ClickHouse Cloud; the shipped DDL unchanged (Cloud turns "
        "it into its shared, replicated engine, which deduplicates inserts itself).",
    )
    name: str = Field("", description="Cluster name as in the servers' remote_servers (replicated mode).")
    local_table: str = Field(
        "", description="Name of the per-shard Replicated table (replicated mode); empty: '<table>_local'."
    )
    zookeeper_path: str = Field(
        "/clickhouse/tables/{shard}/{database}/{table}",
        description="Keeper path of the Replicated table; {shard} and {replica} are the servers' macros, "
        "{database}/{table} are expanded by ClickHouse.",
    )
    replica_name: str = Field("{replica}", description="Replica name of the Replicated table (a macro).")
    sharding_key: str = Field(
        "cityHash64(localPod, remotePod, localIPv4, remoteIPv4)",
        description="Sharding key of the Distributed table. Only columns of the sorting key, so rows that "
        "SummingMergeTree would merge always land on the same shard.",
    )

    @field_validator("name", "local_table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return _plain_identifier(value)

    @model_validator(mode="after")
    def _name_for_replicated(self) -> ClusterConfig:
        if self.mode == "replicated" and not self.name:
            raise ValueError("name is required when mode is replicated (the cluster of remote_servers)")
        if self.mode != "replicated" and (self.name or self.local_table):
            raise ValueError(f"name and local_table only apply to mode: replicated (mode is {self.mode})")
        return self


class MinuteBatchConfig(BatchConfig):
    """The helper's batch settings with this exporter's defaults: blocks of whole minutes."""

    max_flows: int = Field(100_000, gt=0, description="Close a block once it holds this many flows.")
    max_wait: float = Field(60.0, ge=0, description="Seconds a block may collect flows.")
    align: bool = Field(
        True, description="Close blocks on wall-clock multiples of max_wait (on the minute), so that a "
        "block holds whole buckets and pre-aggregation is complete."
    )


class PatientRetryConfig(RetryConfig):
    """The helper's retry settings, but patient: a ClickHouse outage of an hour loses nothing."""

    max_elapsed_time: float = Field(
        3600.0, ge=0, description="Give up (and count the drop) after this many seconds; 0 retries forever."
    )


class ClickHouseConfig(ExporterHelperConfig):
    """Where and how rows go into the ``network_flows_0`` table."""

    endpoint: str = Field(
        "http://localhost:8123/default",
        description="DSN of the target: https://host:8443/db or http://host:8123/db for a server, or "
        "chdb:///abs/path for the embedded engine (one process per path). user:password@ in a server "
        "DSN is accepted but username/password keys are preferred.",
    )
    failover_endpoints: list[str] = Field(
        default_factory=list,
        description="Further servers (other replicas of the same cluster), tried in order after endpoint "
        "when a connection cannot be made; each an http(s):// DSN like endpoint.",
    )
    cluster: ClusterConfig = Field(
        default_factory=ClusterConfig, description="Table layout: one server, a replicated cluster, or Cloud."
    )
    database: str = Field("", description="Database of the table; empty takes it from the DSN path, else 'default'.")
    table: str = Field("network_flows_0", description="Table the rows go to.")
    username: str = Field("", description="User; empty falls back to username_file, then $CLICKHOUSE_USERNAME, "
                          "then the DSN, then 'default'.")
    username_file: str = Field("", description="File holding the user (trailing whitespace trimmed).")
    password: str = Field("", description="Password; empty falls back to password_file, then "
                          "$CLICKHOUSE_PASSWORD, then the DSN.")
    password_file: str = Field("", description="File holding the password (trailing whitespace trimmed).")
    tls: TLSConfig = Field(
        default_factory=TLSConfig, description="TLS towards a server: CA, client certificate, verification."
    )
    compression: Literal["lz4", "zstd", "gzip", "none"] = Field(
        "lz4", description="HTTP compression of inserts and results (servers only; chDB ignores it)."
    )
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to establish a connection to a server.")
    timeout: float = Field(
        30.0, gt=0, description="Seconds one insert may take (HTTP send/receive timeout); then it is retried."
    )
    create_schema: bool | None = Field(
        None,
        description="Create the database and table from the shipped DDL when missing. Default: true for "
        "chdb:// endpoints, false for servers (where the table is usually managed by its owners).",
    )
    deduplication_window: int = Field(
        1000,
        ge=0,
        description="non_replicated_deduplication_window set on tables we create with a non-replicated "
        "engine, so that a retried block (same insert_deduplication_token) is counted once.",
    )
    interval_seconds: int = Field(
        60, gt=0, le=65535, description="Bucket width: intervalStartTime is the UTC start of the bucket "
        "holding the flow's interval end; also written to intervalSeconds."
    )
    aggregate: bool = Field(
        True, description="Sum rows with equal keys within a block before insert (one row per bucket, "
        "direction and endpoints instead of one per agent interval)."
    )
    ipv6: Literal["write", "drop"] = Field(
        "write",
        description="write: IPv6 flows are written with localIPv4/remoteIPv4 = 0.0.0.0 (the table has no "
        "IPv6 columns); drop: they are not written (counted in clickhouse_rows_rejected_total{reason=ipv6}).",
    )
    async_insert: bool = Field(
        False, description="Use server-side async inserts; always with wait_for_async_insert=1 so that an "
        "acknowledged insert is durable, and async_insert_deduplicate=1 so that retries count once."
    )
    # Subclasses rather than default_factory values, so that setting one key
    # (batch: {max_flows: 5000}) keeps this exporter's defaults for the others.
    retry_on_failure: PatientRetryConfig = Field(
        default_factory=PatientRetryConfig,
        description="Retries of failed inserts (default: keep trying for an hour).",
    )
    batch: MinuteBatchConfig = Field(
        default_factory=MinuteBatchConfig,
        description="Blocks close on the minute (max_wait 60, align) so that one block holds whole "
        "buckets and pre-aggregation is complete; max_flows caps a block.",
    )

    @field_validator("database", "table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return _plain_identifier(value)

    @field_validator("endpoint")
    @classmethod
    def _scheme(cls, value: str) -> str:
        scheme = value.partition("://")[0].lower()
        if scheme not in ("http", "https", "chdb"):
            raise ValueError(
                f"{value!r} is not a supported endpoint: use https://host:8443/db, http://host:8123/db "
                "or chdb:///absolute/path"
            )
        return value

    @field_validator("failover_endpoints")
    @classmethod
    def _server_schemes(cls, values: list[str]) -> list[str]:
        for value in values:
            if value.partition("://")[0].lower() not in ("http", "https"):
                raise ValueError(
                    f"{value!r} is not a server endpoint: failover endpoints are https://host:8443/db or "
                    "http://host:8123/db (chDB has no replicas to fail over to)"
                )
        return values

    @model_validator(mode="after")
    def _cluster_needs_a_server(self) -> ClickHouseConfig:
        if self.is_embedded() and (self.failover_endpoints or self.cluster.mode != "single"):
            raise ValueError(
                "failover_endpoints and cluster apply to ClickHouse servers; a chdb:// endpoint is one embedded "
                "engine: remove them or point endpoint at a server"
            )
        return self

    def endpoints(self) -> list[str]:
        """``endpoint`` then the failover endpoints: the order connections are tried in."""
        return [self.endpoint, *self.failover_endpoints]

    def is_embedded(self) -> bool:
        return self.endpoint.lower().startswith("chdb:")

    def creates_schema(self) -> bool:
        return self.is_embedded() if self.create_schema is None else self.create_schema
