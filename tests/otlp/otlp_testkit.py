"""Shared by the OTLP codec, exporter and receiver tests: records, TLS material, live servers.

Everything is real: gRPC over loopback (127.0.0.1, ports picked by the OS),
certificates made with the ``openssl`` CLI (the ``cryptography`` package is
not in the environment).
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubenetmon.component import Kind
from kubenetmon.errors import BackpressureError
from kubenetmon.exporters.otlp import OtlpExporter, OtlpExporterConfig
from kubenetmon.flows import ConntrackRecord, FlowBatch
from kubenetmon.receivers.otlp import OtlpReceiver, OtlpReceiverConfig
from kubenetmon.testing import SinkConsumer, StaticHost, create_settings

SECOND = 1_000_000_000
HOUR = 3600 * SECOND
# Hour-aligned, an hour or two ago: inside the receiver's default window of
# accepted times (limits.max_age 24 h), which a fixed date would leave.
T0 = (time.time_ns() // HOUR - 1) * HOUR


def make_records(
    n: int, *, node: str = "node-a", start: int = T0, nat_every: int = 3, v6_every: int = 2, seed: int = 0
) -> list[ConntrackRecord]:
    """``n`` distinct records: IPv4 and IPv6, mirrored and DNAT'd, TCP and UDP."""
    out = []
    for i in range(n):
        v6 = v6_every and i % v6_every == 1
        if v6:
            src = str(ipaddress.IPv6Address(0xFD00 << 112 | (seed << 32) | (i + 1)))
            dst, backend = "fd00::a:1", f"fd00::b:{(i % 200) + 1:x}"
        else:
            src = str(ipaddress.IPv4Address((10 << 24) | (seed << 20) | (i + 1)))
            dst, backend = "10.96.0.10", f"10.244.{(i // 250) % 250}.{(i % 250) + 1}"
        sport, dport = 1024 + (i * 7) % 60000, (443, 53, 8080, 5432)[i % 4]
        nat = nat_every and i % nat_every == 0
        reply_src, reply_sport = (backend, 8443) if nat else (dst, dport)
        out.append(ConntrackRecord(
            node=node, transport="udp" if dport == 53 else "tcp", network_type="ipv6" if v6 else "ipv4",
            src=src, sport=sport, dst=dst, dport=dport,
            reply_src=reply_src, reply_sport=reply_sport, reply_dst=src, reply_dport=sport,
            original_bytes=100 + i, original_packets=1 + i % 5, reply_bytes=(5000 + i) if i % 7 else 0,
            reply_packets=(2 + i % 3) if i % 7 else 0, start_ns=start, end_ns=start + 5 * SECOND,
        ))
    return out


def by_identity(records: list[ConntrackRecord]) -> list[ConntrackRecord]:
    return sorted(records, key=lambda r: (r.node, r.src, r.sport, r.dst, r.dport, r.start_ns))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- TLS material -----------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting it must fail


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(dir_: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=dir_)


def _leaf(dir_: Path, name: str, ca: str, ext: str) -> None:
    (dir_ / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=dir_)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=dir_)


def make_tls(dir_: Path) -> TLSFiles:
    """A self-signed CA, a server cert for 127.0.0.1/localhost, a client cert, and an unrelated CA."""
    dir_.mkdir(parents=True, exist_ok=True)
    _ca(dir_, "ca")
    _ca(dir_, "other-ca")
    _leaf(dir_, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _leaf(dir_, "client", "ca", "extendedKeyUsage=clientAuth\n")
    return TLSFiles(dir_ / "ca.pem", dir_ / "server.pem", dir_ / "server.key", dir_ / "client.pem",
                    dir_ / "client.key", dir_ / "other-ca.pem")


# --- live components --------------------------------------------------------------------


def start_receiver(
    consumer: Any, *, port: int = 0, interceptors: tuple[grpc.ServerInterceptor, ...] = (), **config: Any
) -> OtlpReceiver:
    grpc_cfg = {"endpoint": f"127.0.0.1:{port}", **config.pop("grpc", {})}
    cfg = OtlpReceiverConfig.model_validate({"grpc": grpc_cfg, **config})
    receiver = OtlpReceiver(create_settings(Kind.RECEIVER, "otlp"), cfg, consumer, interceptors=interceptors)
    receiver.start(StaticHost())
    return receiver


def exporter_config(port: int, **overrides: Any) -> OtlpExporterConfig:
    """Short retry and reconnect intervals so that outage tests take seconds."""
    base: dict[str, Any] = {
        "endpoint": f"127.0.0.1:{port}",
        "tls": {"insecure": True},
        "timeout": 3.0,
        "reconnect_backoff_max": 0.2,
        "retry_on_failure": {"initial_interval": 0.05, "max_interval": 0.3, "max_elapsed_time": 60,
                             "randomization_factor": 0},
        "resource": {"host.name": "agent-host"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return OtlpExporterConfig.model_validate(base)


def make_exporter(config: OtlpExporterConfig, name: str = "otlp") -> OtlpExporter:
    return OtlpExporter(create_settings(Kind.EXPORTER, name), config)


class RefusingConsumer(SinkConsumer):
    """Pushes back the first ``refusals`` batches, then takes them."""

    def __init__(self, refusals: int, retry_after: float | None = None) -> None:
        super().__init__()
        self.refusals = refusals
        self.retry_after = retry_after
        self.refused = 0
        self._lock = threading.Lock()

    def consume(self, batch: FlowBatch) -> None:
        with self._lock:
            if self.refused < self.refusals:
                self.refused += 1
                raise BackpressureError("full (test)", retry_after=self.retry_after)
        super().consume(batch)


class LoseAcknowledgements(grpc.ServerInterceptor):
    """Lets the receiver handle a request fully, then fails the call: the ack is lost.

    Models a connection that breaks after the gateway consumed a batch but
    before the agent saw the answer.
    """

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.lost = 0
        self._lock = threading.Lock()

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.stream_unary is None:  # the receiver serves Export as stream→unary
            return handler
        inner = handler.stream_unary

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            response = inner(request, context)
            with self._lock:
                lose = self.remaining > 0
                if lose:
                    self.remaining -= 1
                    self.lost += 1
            if lose:
                context.abort(grpc.StatusCode.UNAVAILABLE, "acknowledgement lost (test)")
            return response

        return grpc.stream_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@pytest.fixture
def receivers() -> Iterator[Callable[..., OtlpReceiver]]:
    """Start receivers for a test; every one is shut down at its end, even when it fails."""
    started: list[OtlpReceiver] = []

    def start(consumer: Any, **kw: Any) -> OtlpReceiver:
        r = start_receiver(consumer, **kw)
        started.append(r)
        return r

    yield start
    for r in started:
        r.shutdown(2.0)


@pytest.fixture
def exporters() -> Iterator[Callable[..., OtlpExporter]]:
    """Start (or only open) otlp exporters; each is shut down and closed at the test's end."""
    started: list[OtlpExporter] = []

    def start(config: OtlpExporterConfig, *, run: bool = True) -> OtlpExporter:
        e = make_exporter(config)
        if run:
            e.start(StaticHost())
        else:
            e.open()
        started.append(e)
        return e

    yield start
    for e in started:
        e.shutdown(1.0)
        e.close()
