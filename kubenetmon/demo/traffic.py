"""Known traffic between mini-cluster namespaces: fixed payloads, counted at both ends.

Servers and clients are sockets created inside pod (or public host)
namespaces and driven from threads of this process, so no extra program is
needed. The wire protocol is tiny and makes every byte predictable:

* TCP: the client sends ``!II`` (request length, response length) followed
  by the request; the server answers with exactly the response length. A
  connection carries ``rounds`` such exchanges.
* UDP: one datagram of the request length whose first 4 bytes are the
  response length; the server answers with one datagram of that length, in
  lock step, so nothing is lost to a full socket buffer.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from kubenetmon.netns import Namespace

__all__ = ["Exchange", "ExchangeResult", "PeerServer", "TrafficLoop", "run_exchange", "run_exchanges"]

_TCP_HEADER = struct.Struct("!II")
_UDP_HEADER = struct.Struct("!I")
_CHUNK = 1 << 16


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        part = sock.recv(min(n, _CHUNK))
        if not part:
            raise ConnectionError("peer closed the connection mid-message")
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


class PeerServer:
    """TCP and UDP servers on one address and port inside a namespace.

    ``stop()`` closes them; connections in progress finish on their own
    threads.
    """

    def __init__(self, netns: Namespace, address: str, port: int) -> None:
        self.netns, self.address, self.port = netns, address, port
        family = _family(address)
        with netns.entered():
            self._tcp = socket.socket(family, socket.SOCK_STREAM)
            self._udp = socket.socket(family, socket.SOCK_DGRAM)
        for sock in (self._tcp, self._udp):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
        self._tcp.listen(64)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"peer-{address}:{port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._tcp, selectors.EVENT_READ)
            sel.register(self._udp, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select(timeout=0.2):
                    if self._stopping.is_set():
                        return
                    if key.fileobj is self._tcp:
                        conn, _ = self._tcp.accept()
                        threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True).start()
                    else:
                        data, peer = self._udp.recvfrom(_CHUNK)
                        (size,) = _UDP_HEADER.unpack_from(data)
                        self._udp.sendto(b"r" * size, peer)

    @staticmethod
    def _serve_tcp(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while True:
                header = conn.recv(_TCP_HEADER.size, socket.MSG_WAITALL)
                if len(header) < _TCP_HEADER.size:
                    return
                request, response = _TCP_HEADER.unpack(header)
                _recv_exactly(conn, request)
                conn.sendall(b"r" * response)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=2)
        self._tcp.close()
        self._udp.close()


@dataclass(frozen=True)
class Exchange:
    """One planned connection: who talks to which address, how much, how often."""

    client: Namespace
    server_address: str
    server_port: int
    transport: str = "tcp"  # "tcp" | "udp"
    request_bytes: int = 1000
    response_bytes: int = 1000
    rounds: int = 1
    pause: float = 0.0  # seconds between rounds: > interval makes a long-lived connection


@dataclass
class ExchangeResult:
    """What one exchange put on the wire at application level, and its 5-tuple."""

    exchange: Exchange
    client_address: str = ""
    client_port: int = 0
    sent_payload: int = 0  # client → server, application bytes (TCP header of ours included)
    received_payload: int = 0  # server → client
    datagrams: int = 0  # UDP: datagrams each way
    error: str = ""


def run_exchange(exchange: Exchange, stop: threading.Event | None = None) -> ExchangeResult:
    """Run one connection to completion (or until ``stop``); never raises, errors go in the result."""
    result = ExchangeResult(exchange)
    kind = socket.SOCK_STREAM if exchange.transport == "tcp" else socket.SOCK_DGRAM
    with exchange.client.entered():
        sock = socket.socket(_family(exchange.server_address), kind)
    try:
        with sock:
            sock.settimeout(5)
            sock.connect((exchange.server_address, exchange.server_port))
            result.client_address, result.client_port = sock.getsockname()[:2]
            for round_ in range(exchange.rounds):
                if round_ and exchange.pause:
                    time.sleep(exchange.pause)
                if stop is not None and stop.is_set():
                    break
                if exchange.transport == "tcp":
                    sock.sendall(_TCP_HEADER.pack(exchange.request_bytes, exchange.response_bytes)
                                 + b"q" * exchange.request_bytes)
                    result.sent_payload += _TCP_HEADER.size + exchange.request_bytes
                    _recv_exactly(sock, exchange.response_bytes)
                    result.received_payload += exchange.response_bytes
                else:
                    size = max(exchange.request_bytes, _UDP_HEADER.size)
                    sock.send(_UDP_HEADER.pack(exchange.response_bytes) + b"q" * (size - _UDP_HEADER.size))
                    result.sent_payload += size
                    result.received_payload += len(sock.recv(_CHUNK))
                    result.datagrams += 1
            if exchange.transport == "tcp":
                sock.shutdown(socket.SHUT_WR)
                sock.recv(1)  # wait for the server's FIN: the connection is fully closed
    except OSError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def run_exchanges(exchanges: Iterable[Exchange], *, parallel: int = 8) -> list[ExchangeResult]:
    """Run exchanges, ``parallel`` at a time; results keep the input order."""
    planned = list(exchanges)
    results: list[ExchangeResult | None] = [None] * len(planned)
    lock = threading.Lock()
    next_index = iter(range(len(planned)))

    def worker() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            results[i] = run_exchange(planned[i])

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, parallel))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


@dataclass
class TrafficLoop:
    """Repeats a set of exchanges in the background until stopped (demo, faults, benchmarks)."""

    exchanges: list[Exchange]
    period: float = 0.5
    results: list[ExchangeResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic-loop", daemon=True)

    def start(self) -> TrafficLoop:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.results.extend(run_exchanges(self.exchanges))
            self._stop.wait(self.period)

    def stop(self) -> list[ExchangeResult]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.results
