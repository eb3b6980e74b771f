"""Test topologies and real traffic between network namespaces for the conntrack receiver.

Every namespace is made through :class:`kubenetmon.netns.NamespaceRegistry`
(prefix ``knmct``), so it is gone when the test ends, even on failure.
Traffic uses in-process sockets created inside the namespaces.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from kubenetmon.netns import Namespace, NamespaceRegistry, veth_pair

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="conntrack in network namespaces needs root")

#: ``make_receiver(netns_name, **config)`` → (opened receiver, its SinkConsumer); see conftest.
MakeReceiver = Callable[..., tuple[Any, Any]]

#: Per packet, conntrack counts the IP packet: IP header + TCP header with
#: options (v4: 20 + 40, v6: 40 + 40 at most), so payload + packets × 80
#: bounds the bytes of a direction.
HEADER_BOUND = 80

V4_CLIENT, V4_SERVER = "10.231.0.1", "10.231.0.2"
V6_CLIENT, V6_SERVER = "fd00:231::1", "fd00:231::2"


@dataclass
class Pair:
    """A client and a server namespace joined by a veth; the server tracks connections."""

    client: Namespace
    server: Namespace


def make_pair(reg: NamespaceRegistry) -> Pair:
    client, server = reg.create("cli"), reg.create("srv")
    veth_pair(client, "c0", server, "s0")
    client.add_address("c0", f"{V4_CLIENT}/24")
    client.add_address("c0", f"{V6_CLIENT}/64")
    server.add_address("s0", f"{V4_SERVER}/24")
    server.add_address("s0", f"{V6_SERVER}/64")
    server.track_connections()
    return Pair(client, server)


def kernel_counters(pair: Pair, sport: int, settle: float = 0.15) -> tuple[int, int, int, int]:
    """(orig bytes, orig packets, reply bytes, reply packets) of the TCP entry with this original
    source port, as ``conntrack -L`` shows them, once they stopped changing (delayed ACKs)."""
    previous: tuple[int, int, int, int] | None = None
    for _ in range(50):
        out = pair.server.run(["conntrack", "-L", "-p", "tcp", "--orig-port-src", str(sport)]).stdout
        line = next(ln for ln in out.splitlines() if f"sport={sport}" in ln)
        op, ob, rp, rb = (int(f.split("=", 1)[1]) for f in line.split() if f.startswith(("packets=", "bytes=")))
        current = (ob, op, rb, rp)
        if current == previous:
            return current
        previous = current
        time.sleep(settle)
    raise AssertionError(f"the counters of port {sport} never settled")


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


class TcpConnection:
    """One real TCP connection from ``client`` to ``server``; send either way, then close."""

    def __init__(self, client: Namespace, server: Namespace, address: str, port: int = 0) -> None:
        family = _family(address)
        with server.entered():
            self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((address, port))
        self._listener.listen(1)
        with client.entered():
            self.client = socket.socket(family, socket.SOCK_STREAM)
        self.client.connect(self._listener.getsockname()[:2])
        self.server, _ = self._listener.accept()
        self._listener.close()
        self.client_port = self.client.getsockname()[1]
        self.server_port = self.server.getsockname()[1]

    @staticmethod
    def _transfer(sender: socket.socket, receiver: socket.socket, n: int) -> None:
        got = bytearray()
        reader = threading.Thread(target=lambda: _read_exactly(receiver, n, got))
        reader.start()
        sender.sendall(b"x" * n)
        reader.join(30)
        assert len(got) == n, f"received {len(got)} of {n} bytes"

    def send_to_server(self, n: int) -> None:
        self._transfer(self.client, self.server, n)

    def send_to_client(self, n: int) -> None:
        self._transfer(self.server, self.client, n)

    def close(self) -> None:
        """Close both ends cleanly (FIN both ways), so that the entry ends in TIME_WAIT/CLOSE."""
        self.client.shutdown(socket.SHUT_WR)
        assert self.server.recv(1) == b""
        self.server.close()
        assert self.client.recv(1) == b""
        self.client.close()


def _read_exactly(sock: socket.socket, n: int, into: bytearray) -> None:
    while len(into) < n:
        chunk = sock.recv(min(1 << 20, n - len(into)))
        if not chunk:
            return
        into += chunk


def udp_exchange(client: Namespace, server: Namespace, address: str, request: int, reply: int) -> int:
    """One UDP request/response of the given payload sizes; returns the client's port."""
    family = _family(address)
    with server.entered():
        srv = socket.socket(family, socket.SOCK_DGRAM)
    with client.entered():
        cli = socket.socket(family, socket.SOCK_DGRAM)
    with srv, cli:
        srv.bind((address, 0))
        srv.settimeout(5)
        cli.settimeout(5)
        cli.sendto(b"q" * request, srv.getsockname()[:2])
        data, peer = srv.recvfrom(65535)
        assert len(data) == request
        srv.sendto(b"r" * reply, peer)
        assert len(cli.recv(65535)) == reply
        return int(cli.getsockname()[1])
