"""A raw HTTP/2 client that opens gRPC calls and never sends their message (issue 16 item 3).

No HTTP/2 library is in the environment, and a real gRPC client always
finishes its message; this writes the frames by hand: the connection
preface, SETTINGS (and the ACK of the server's), then per call one HEADERS
frame (HPACK literals, no Huffman) without END_STREAM, and no DATA. A reader
thread notes which streams the server ended (a trailers-only answer or
RST_STREAM), so a test sees refusals without decoding HPACK.

Bound to a chosen source address on loopback (127.0.0.2 ...), so it is a
different client address from the well-behaved agent's 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def _literal(text: str) -> bytes:
    data = text.encode()
    assert len(data) < 127
    return bytes((len(data),)) + data


def header_block(headers: Iterable[tuple[str, str]]) -> bytes:
    # Literal header field without indexing, new name (RFC 7541 §6.2.2).
    return b"".join(b"\x00" + _literal(k) + _literal(v) for k, v in headers)


class StallingClient:
    """One TCP connection; ``open()`` starts an Export call whose body never comes."""

    def __init__(self, port: int, source: str = "127.0.0.2") -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self.ended: set[int] = set()
        self.goaway = False
        self._next = 1
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def open(self, metadata: Iterable[tuple[str, str]] = ()) -> int:
        stream = self._next
        self._next += 2
        block = header_block([
            (":method", "POST"), (":scheme", "http"), (":path", EXPORT), (":authority", f"127.0.0.1:{self.port}"),
            ("content-type", "application/grpc"), ("te", "trailers"), *metadata,
        ])
        self.sock.sendall(frame(HEADERS, END_HEADERS, stream, block))
        return stream

    def wait_ended(self, count: int, timeout: float) -> bool:
        """True once the server ended at least ``count`` streams."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.ended) >= count, timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _recv_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    def _read(self) -> None:
        try:
            while True:
                head = self._recv_exact(9)
                length = int.from_bytes(head[:3], "big")
                kind, flags = head[3], head[4]
                stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                payload = self._recv_exact(length)
                if kind == SETTINGS and not flags & ACK:
                    self.sock.sendall(frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    self.sock.sendall(frame(PING, ACK, 0, payload))
                with self._changed:
                    if (kind == HEADERS and flags & END_STREAM) or kind == RST_STREAM:
                        self.ended.add(stream)
                    elif kind == GOAWAY:
                        self.goaway = True
                    self._changed.notify_all()
        except (OSError, EOFError):
            return
