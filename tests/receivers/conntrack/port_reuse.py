"""Short TCP connections that reuse a few source ports, and an oracle independent of the receiver.

When a client reuses a source port while the previous connection's
conntrack entry is still in TIME_WAIT (default 120 s) or CLOSE (after a
RST), the kernel kills that entry and creates a new one for the same tuple,
which very often gets the same ``CTA_ID`` (the id is derived from the
entry's address, and the freed slot is reused). :class:`PortReusingTraffic`
produces exactly that, hundreds of times per second.

:class:`DestroyOracle` is what the kernel counted, read by a separate
process: ``conntrack -E -e DESTROY`` prints every entry's final counters
when it ends; once the table is flushed at the end of a test, the sum per
address pair is everything the kernel counted for that pair.
"""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

from kubenetmon.flows import ConntrackRecord
from kubenetmon.netns import Namespace

#: (original bytes, original packets, reply bytes, reply packets) per (source address, destination address).
PairTotals = dict[tuple[str, str], tuple[int, int, int, int]]

SERVER_PORT = 8080
_HEADER = struct.Struct(">IIB")  # request bytes, reply bytes, how to close
_GRACEFUL, _RESET = 0, 1
_LINGER_ZERO = struct.pack("ii", 1, 0)


def record_totals(records: list[ConntrackRecord]) -> PairTotals:
    """The receiver's output summed per address pair (TCP only)."""
    sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in records:
        if r.transport != "tcp":
            continue
        s = sums[r.src, r.dst]
        s[0] += r.original_bytes
        s[1] += r.original_packets
        s[2] += r.reply_bytes
        s[3] += r.reply_packets
    return {k: (v[0], v[1], v[2], v[3]) for k, v in sums.items()}


class DestroyOracle:
    """``conntrack -E -e DESTROY`` in the namespace, writing every ended entry's final counters to a file."""

    def __init__(self, ns: Namespace, path: Path) -> None:
        self._path = path
        self._out = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        # A large buffer: the final flush ends thousands of entries at once.
        self._proc = ns.popen(
            ["conntrack", "-E", "-e", "DESTROY", "-p", "tcp", "-b", str(64 << 20)],
            stdout=self._out, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 5
        while "NOTICE" not in path.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)  # it announces its buffer size once subscribed

    def lines(self) -> list[str]:
        return [ln for ln in self._path.read_text().splitlines() if "[DESTROY]" in ln]

    def totals(self) -> PairTotals:
        sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for line in self.lines():
            fields = [f.split("=", 1) for f in line.split() if "=" in f]
            src = next(v for k, v in fields if k == "src")
            dst = next(v for k, v in fields if k == "dst")
            packets = [int(v) for k, v in fields if k == "packets"]
            bytes_ = [int(v) for k, v in fields if k == "bytes"]
            s = sums[src, dst]
            s[0] += bytes_[0]
            s[1] += packets[0]
            s[2] += bytes_[1]
            s[3] += packets[1]
        return {k: (v[0], v[1], v[2], v[3]) for k, v in sums.items()}

    def stop(self) -> str:
        """Stop the listener; returns its whole output (to check that it lost nothing)."""
        self._proc.terminate()
        self._proc.wait(10)
        self._out.close()
        return self._path.read_text()


def flush_and_settle(ns: Namespace, oracle: DestroyOracle, timeout: float = 20.0) -> None:
    """End every entry (each one's DESTROY event carries its final counters) and wait for the oracle."""
    ns.run(["conntrack", "-F"], check=False)
    deadline = time.monotonic() + timeout
    previous = -1
    while time.monotonic() < deadline:
        count = int(ns.run(["conntrack", "-C"]).stdout.strip() or 0)
        seen = len(oracle.lines())
        if count == 0 and seen == previous:
            return
        if count:
            ns.run(["conntrack", "-F"], check=False)
        previous = seen
        time.sleep(0.3)
    raise AssertionError("the conntrack table did not empty, or its DESTROY events kept coming")


class PortReusingTraffic:
    """Worker threads making short TCP connections from a few fixed source ports (``SO_REUSEADDR`` +
    explicit bind) to one server, some closed by the server first (the entry ends in TIME_WAIT), some by
    a client RST (``SO_LINGER`` 0; the entry ends in CLOSE). The next connection on the same source port
    replaces the entry."""

    def __init__(
        self, client: Namespace, server: Namespace, client_addresses: list[str], server_addresses: list[str],
        *, workers: int = 4, ports_per_worker: int = 2, first_port: int = 41000, seed: int = 13,
    ) -> None:
        self._client, self._server = client, server
        self._server_addresses = server_addresses
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._idle = [threading.Event() for _ in range(workers)]
        self.connections = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._listeners: list[socket.socket] = []
        for address in server_addresses:
            with server.entered():
                listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((address, SERVER_PORT))
            listener.listen(256)
            listener.settimeout(0.2)
            self._listeners.append(listener)
        self._threads = [threading.Thread(target=self._accept, args=(s,), daemon=True) for s in self._listeners]
        for w in range(workers):
            ports = [first_port + w * ports_per_worker + i for i in range(ports_per_worker)]
            self._threads.append(threading.Thread(
                target=self._work, args=(w, client_addresses, ports, random.Random(seed + w)), daemon=True,
            ))
        for t in self._threads:
            t.start()

    # --- server ---------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            header = _recv_exactly(conn, _HEADER.size)
            request, reply, close = _HEADER.unpack(header)
            _recv_exactly(conn, request)
            conn.sendall(b"r" * reply)
            if close == _RESET:
                while conn.recv(65536):  # until the client's RST (or FIN)
                    pass
        except OSError:
            pass
        finally:
            conn.close()  # graceful: the server closes first, the entry goes to TIME_WAIT

    # --- clients --------------------------------------------------------------------

    def _work(self, index: int, addresses: list[str], ports: list[int], rng: random.Random) -> None:
        with self._client.entered():
            turn = 0
            while not self._stop.is_set():
                if not self._running.is_set():
                    self._idle[index].set()
                    self._running.wait(0.1)
                    continue
                self._idle[index].clear()
                address = addresses[turn % len(addresses)]
                port = ports[(turn // len(addresses)) % len(ports)]
                turn += 1
                server = next(s for s in self._server_addresses if (":" in s) == (":" in address))
                ok = self._connect_once(address, port, server, rng)
                with self._lock:
                    if ok:
                        self.connections += 1
                    else:
                        self.failures += 1
                if not ok:
                    time.sleep(0.01)
            self._idle[index].set()

    @staticmethod
    def _connect_once(address: str, port: int, server: str, rng: random.Random) -> bool:
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.settimeout(3)
            sock.bind((address, port))
            sock.connect((server, SERVER_PORT))
            request, reply = rng.randrange(1, 20_000), rng.randrange(1, 60_000)
            close = _RESET if rng.random() < 0.3 else _GRACEFUL
            sock.sendall(_HEADER.pack(request, reply, close) + b"q" * request)
            _recv_exactly(sock, reply)
            if close == _RESET:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            else:
                while sock.recv(65536):  # the server's FIN
                    pass
            return True
        except OSError:
            return False
        finally:
            sock.close()

    def pause(self, timeout: float = 10.0) -> None:
        """Let every worker finish its connection and wait; no new connection starts until :meth:`resume`."""
        self._running.clear()
        deadline = time.monotonic() + timeout
        for idle in self._idle:
            assert idle.wait(max(0.0, deadline - time.monotonic())), "a traffic worker did not pause"

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._running.set()
        self._stop.set()
        for t in self._threads:
            t.join(10)
        for listener in self._listeners:
            listener.close()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(min(65536, n - len(got)))
        if not chunk:
            raise ConnectionError(f"closed after {len(got)} of {n} bytes")
        got += chunk
    return bytes(got)
