"""Config of the ``otlp`` exporter (OpenTelemetry Collector key names where they exist)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kubenetmon.exporterhelper import ExporterHelperConfig

__all__ = ["ArrowExporterConfig", "ClientTLSConfig", "OtlpExporterConfig"]


class ClientTLSConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    insecure: bool = Field(False, description="Plain-text gRPC (no TLS). For loopback and trusted networks only.")
    ca_file: str = Field("", description="PEM file of the CA(s) that sign the server's certificate; "
                         "empty uses the system roots.")
    cert_file: str = Field("", description="PEM client certificate for mTLS (with key_file).")
    key_file: str = Field("", description="PEM private key of cert_file.")
    server_name_override: str = Field(
        "", description="Host name to check the server certificate against instead of the endpoint's host."
    )

    @model_validator(mode="after")
    def _pair(self) -> ClientTLSConfig:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file must be set together (mTLS) or both left empty")
        return self


class ArrowExporterConfig(BaseModel):
    """OTAP (OpenTelemetry Protocol with Apache Arrow) to the gateway, negotiated; Export stays the fallback."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        False, description="Send conntrack records as OTAP BatchArrowRecords on ArrowMetrics streams; when the "
        "server answers UNIMPLEMENTED (no ArrowMetricsService), use Export for the life of the process. Flows "
        "(gateway → backend) always use Export."
    )
    num_streams: int = Field(1, ge=1, description="Arrow streams kept open (one BAR in flight on each).")
    payload_compression: Literal["zstd", "none"] = Field(
        "zstd", description="Compression of the Arrow IPC buffers inside each BAR."
    )
    max_points_per_bar: int = Field(
        65536, ge=4, description="Split a queue block into BARs of about this many data points (a record's "
        "points stay together); each BAR is acknowledged and deduplicated on its own, like split requests."
    )
    max_stream_lifetime: float = Field(
        300.0, gt=0, description="Seconds after which a stream is replaced by a new one (so agents spread over "
        "gateway replicas again)."
    )


class OtlpExporterConfig(ExporterHelperConfig):
    """OTLP/gRPC ``MetricsService/Export``: records per DESIGN §4.1, flows per §4.4."""

    endpoint: str = Field("localhost:4317", description="host:port of the OTLP/gRPC server (no scheme).")
    tls: ClientTLSConfig = Field(default_factory=ClientTLSConfig, description="TLS / mTLS to the server.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description='Extra gRPC metadata on every request, e.g. {authorization: "Bearer ${env:TOKEN}"}.',
    )
    compression: Literal["gzip", "none"] = Field("gzip", description="Request compression.")
    resource: dict[str, str] = Field(
        default_factory=dict,
        description="Resource attributes. For records, k8s.node.name comes from each record (falling back "
        "to this map, e.g. k8s.node.name: ${NODE_NAME}); service.name defaults to kubenetmon-agent for "
        "records and kubenetmon for flows; host.name defaults to the node name.",
    )
    max_points_per_request: int = Field(
        8000, ge=4, description="Split a batch into requests of at most this many data points."
    )
    balancer_name: Literal["pick_first", "round_robin"] = Field(
        "pick_first", description="gRPC load balancing over the addresses the endpoint resolves to."
    )
    keepalive_time: float = Field(30.0, gt=0, description="Seconds between keepalive pings on an idle channel.")
    keepalive_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a keepalive ping's answer.")
    reconnect_backoff_max: float = Field(
        5.0, gt=0, description="Upper bound of the wait between reconnection attempts to the server."
    )
    max_message_size_mib: int = Field(64, gt=0, description="Largest request or response, in MiB.")
    arrow: ArrowExporterConfig = Field(
        default_factory=ArrowExporterConfig, description="OTAP streams to the gateway (off: plain OTLP Export)."
    )

    @field_validator("endpoint")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if "://" in value:
            raise ValueError(f"endpoint {value!r} must be host:port without a scheme (e.g. gateway:4317)")
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"endpoint {value!r} must be host:port, e.g. kubenetmon-gateway:4317")
        return value

    @field_validator("headers")
    @classmethod
    def _lowercase_keys(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if k != k.lower() or not k]
        if bad:
            raise ValueError(f"header names must be lower case (gRPC metadata): {', '.join(map(repr, bad))}")
        return value
