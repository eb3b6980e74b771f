"""Config of the ``otlp`` receiver (OpenTelemetry Collector key names where they exist)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kubenetmon.component import ComponentConfig

__all__ = [
    "AuthConfig",
    "DedupConfig",
    "GrpcServerConfig",
    "KeepaliveConfig",
    "LimitsConfig",
    "OtlpReceiverConfig",
    "ServerTLSConfig",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerTLSConfig(_Strict):
    cert_file: str = Field("", description="PEM server certificate; empty serves plain text (no TLS).")
    key_file: str = Field("", description="PEM private key of cert_file.")
    client_ca_file: str = Field(
        "", description="PEM CA(s) of client certificates; set it to require mTLS (clients without a "
        "certificate signed by it are refused)."
    )

    @model_validator(mode="after")
    def _pair(self) -> ServerTLSConfig:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file must be set together")
        if self.client_ca_file and not self.cert_file:
            raise ValueError("client_ca_file (mTLS) needs cert_file and key_file")
        return self


class KeepaliveConfig(_Strict):
    time: float = Field(30.0, gt=0, description="Seconds of inactivity before the server pings a client.")
    timeout: float = Field(10.0, gt=0, description="Seconds to wait for a ping's answer before closing.")
    max_connection_idle: float = Field(0.0, ge=0, description="Close connections idle this long; 0 never.")
    max_connection_age: float = Field(
        300.0, ge=0,
        description="Close connections this old (clients reconnect, so agents rebalance across gateway "
        "replicas); 0 never.",
    )
    max_connection_age_grace: float = Field(
        30.0, ge=0, description="Seconds in-flight requests get after max_connection_age before the close."
    )
    min_client_ping_interval: float = Field(
        10.0, ge=0, description="Clients pinging more often than this are told to go away (too_many_pings)."
    )


class GrpcServerConfig(_Strict):
    endpoint: str = Field("0.0.0.0:4317", description="host:port to listen on (port 0: any free port).")
    tls: ServerTLSConfig = Field(default_factory=ServerTLSConfig, description="TLS / mTLS of the server.")
    max_recv_msg_size_mib: int = Field(32, gt=0, description="Largest request accepted (after decompression).")
    max_concurrent_requests: int = Field(
        16, gt=0, description="Requests in progress at once (receiving, decoding or waiting to); more are "
        "refused at once with RESOURCE_EXHAUSTED, counted and logged."
    )
    max_requests_per_peer: int = Field(
        4, gt=0, description="Requests in progress at once from one client address; more are refused with "
        "RESOURCE_EXHAUSTED, so one client (stalled or flooding) cannot take every slot. Agents behind one "
        "NAT address share it."
    )
    read_timeout: float = Field(
        10.0, gt=0, description="Seconds a request may take from its headers to its complete message; a "
        "client that stalls longer is cancelled (counted as read_timeout) and frees its slot."
    )
    workers: int = Field(
        1, gt=0, description="Requests decoded at once (CPU work); requests still receiving their message, "
        "and decoded ones waiting for the pipeline (see merge), do not hold a worker. Decoding holds "
        "Python's GIL most of the time: more than one at once mostly adds switching between threads "
        "(measured: 25 streams, one core's worth of BARs, 2.1 µs CPU per record with 1, 3.0-3.2 with 4)."
    )
    keepalive: KeepaliveConfig = Field(
        default_factory=KeepaliveConfig, description="Keepalive pings and connection age (agents rebalance)."
    )

    @field_validator("endpoint")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"endpoint {value!r} must be host:port, e.g. 0.0.0.0:4317")
        return value


class AuthConfig(_Strict):
    bearer_token: str = Field(
        "", description="When set, requests must carry 'authorization: Bearer <token>'; others get "
        "UNAUTHENTICATED. Use ${env:VAR} rather than a literal."
    )


class DedupConfig(_Strict):
    enabled: bool = Field(True, description="Acknowledge without consuming a request whose "
                          "kubenetmon-batch-id this node already delivered.")
    max_ids_per_node: int = Field(
        512, gt=0, description="Batch ids remembered per node (about 200 bytes each)."
    )
    ttl: float = Field(
        600.0, gt=0, description="Seconds a batch id is remembered; cover the agents' retry window "
        "(retry_on_failure.max_elapsed_time) and a restart."
    )
    path: str = Field(
        "", description="File journaling delivered batch ids (appended and fsync'd before the "
        "acknowledgement, compacted as ids expire), so the window survives a restart or kill -9; put it next "
        "to the exporter's persistent queue. Empty: memory only (a batch re-sent after a restart is stored "
        "twice)."
    )


class LimitsConfig(_Strict):
    """What a data point may claim; a point beyond these is rejected alone (partial success)."""

    max_age: float = Field(
        86400.0, gt=0, description="Seconds a point's start and end may lie in the past: at least the agents' "
        "retry window (retry_on_failure.max_elapsed_time) plus how long a persistent queue may hold data."
    )
    max_future: float = Field(
        300.0, gt=0, description="Seconds a point's end may lie ahead of this gateway's clock (clock skew)."
    )
    max_bytes_per_second: int = Field(
        50_000_000_000, gt=0, description="Largest byte rate one tuple and direction may claim (default "
        "400 Gbit/s); a delta above it times the interval (at least 1 s) is rejected as impossible_delta."
    )
    max_packets_per_second: int = Field(
        600_000_000, gt=0, description="Largest packet rate one tuple and direction may claim (400 Gbit/s of "
        "minimum-size frames)."
    )


class ArrowReceiverConfig(_Strict):
    """OTAP (OpenTelemetry Protocol with Apache Arrow): otel-arrow's ArrowMetricsService on the same server."""

    enabled: bool = Field(
        True, description="Serve ArrowMetricsService/ArrowMetrics next to Export (an agent with arrow.enabled "
        "uses it; without it, agents fall back to Export)."
    )
    max_streams: int = Field(
        256, gt=0, description="Arrow streams open at once (each holds one server thread while it lives, and "
        "its IPC readers); more are refused with RESOURCE_EXHAUSTED and those agents use Export."
    )
    max_decompressed_mib: int = Field(
        256, gt=0, description="Largest a BAR's Arrow buffers may declare to hold once decompressed (checked "
        "before decompressing); larger BARs are refused (too_large). The agent's BARs of 65,536 points hold ~11 MiB."
    )


class MergeConfig(_Strict):
    """Requests that wait while the pipeline is busy are handed on together (group commit, see merge.py)."""

    enabled: bool = Field(
        True, description="Merge the requests waiting for the pipeline into one batch (each is still "
        "acknowledged only once its records are queued); off: every request goes on alone."
    )
    max_records: int = Field(65_536, gt=0, description="Records one merged batch may hold at most.")
    max_requests: int = Field(64, gt=0, description="Requests one merged batch may hold at most.")
    linger: float = Field(
        0.2, ge=0, description="Seconds a merged batch may wait, at most, for requests that are being decoded "
        "when it is formed (only then: a request that finds nothing else on its way goes on at once). Larger "
        "batches cost the stages after the receiver less per record; each such request's acknowledgement comes "
        "that much later. 0: take only what already waits."
    )


class OtlpReceiverConfig(ComponentConfig):
    """OTLP/gRPC ``MetricsService/Export`` server for the agent → gateway contract (DESIGN §4.1)."""

    grpc: GrpcServerConfig = Field(default_factory=GrpcServerConfig, description="The gRPC server.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Client authentication.")
    limits: LimitsConfig = Field(
        default_factory=LimitsConfig, description="Times and counter deltas a data point may claim."
    )
    dedup: DedupConfig = Field(
        default_factory=DedupConfig, description="Counting a batch retried after a lost acknowledgement once."
    )
    arrow: ArrowReceiverConfig = Field(
        default_factory=ArrowReceiverConfig, description="OTAP streams (ArrowMetricsService) from agents."
    )
    merge: MergeConfig = Field(
        default_factory=MergeConfig, description="Requests arriving together go through the pipeline as one batch."
    )
    backpressure_status: Literal["unavailable", "resource_exhausted"] = Field(
        "unavailable", description="gRPC status sent (with RetryInfo) when the next consumer pushes back."
    )
    backpressure_retry_after: float = Field(
        1.0, gt=0, description="RetryInfo delay when the consumer pushes back without saying when to retry."
    )
