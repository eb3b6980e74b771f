"""A large conntrack table built from real packets, for benchmarks (DESIGN §5).

Two namespaces joined by a veth: ``gen`` sends one UDP datagram per wanted
entry to ``tbl``, over many destination addresses and ports; ``tbl`` tracks
connections (``nf_conntrack_acct=1``), keeps unreplied UDP entries for an
hour, and drops the ICMP port-unreachable answers on the way out, so nothing
goes back. :meth:`ConntrackTable.touch` sends one more datagram on a fraction of
the entries, making them "active" for the next dump.

The global ``nf_conntrack_max`` is raised for the lifetime of the table and
restored afterwards (:func:`raised_conntrack_max`). Reusable by any
benchmark::

    with NamespaceRegistry("knmct") as reg, raised_conntrack_max(400_000):
        table = ConntrackTable(reg, 100_000)
        table.touch(1 / 3)
        table.namespace.run(["conntrack", "-C"])
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
from collections.abc import Iterator
from pathlib import Path

from kubenetmon.netns import Namespace, NamespaceRegistry, veth_pair

__all__ = ["ConntrackTable", "raised_conntrack_max"]

_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
_PORTS_PER_ADDRESS = 60_000
_FIRST_PORT = 2_000


@contextlib.contextmanager
def raised_conntrack_max(at_least: int) -> Iterator[None]:
    """Raise the global ``nf_conntrack_max`` to ``at_least`` (if lower) and restore it after."""
    before = int(_MAX.read_text())
    if before < at_least:
        _MAX.write_text(f"{at_least}\n")
    try:
        yield
    finally:
        _MAX.write_text(f"{before}\n")


class ConntrackTable:
    """``entries`` UDP conntrack entries in namespace ``tbl`` (see the module docstring)."""

    def __init__(self, registry: NamespaceRegistry, entries: int, *, role: str = "tbl") -> None:
        self.entries = entries
        self.namespace: Namespace = registry.create(role)
        self.generator: Namespace = registry.create(f"{role}gen")
        veth_pair(self.generator, "g0", self.namespace, "t0")
        self.generator.add_address("g0", "10.250.0.1/16")
        self.namespace.add_address("t0", "10.250.0.2/16")
        self.addresses = [f"10.250.{1 + i // 250}.{1 + i % 250}" for i in range(-(-entries // _PORTS_PER_ADDRESS))]
        for address in self.addresses:
            self.namespace.add_address("t0", f"{address}/32")
        self.namespace.set_sysctls({
            "net.netfilter.nf_conntrack_udp_timeout": 3600,
            "net.netfilter.nf_conntrack_udp_timeout_stream": 3600,
        })
        self.namespace.track_connections()
        # The datagrams must be delivered (an entry is only confirmed into the
        # table once its packet passed every hook); nobody listens, so the
        # port-unreachable answers are dropped on the way out: nothing goes back.
        self.namespace.nft(
            "table inet knm_table_drop {\n"
            "  chain output { type filter hook output priority 10; policy accept; meta l4proto icmp drop; }\n"
            "}\n"
        )
        # Neighbour entries up front, so that no datagram waits for ARP.
        self.generator.ip("neigh", "replace", "10.250.0.2", "lladdr", self._mac("t0"), "dev", "g0")
        self._targets = [
            (self.addresses[i // _PORTS_PER_ADDRESS], _FIRST_PORT + i % _PORTS_PER_ADDRESS) for i in range(entries)
        ]
        for address in self.addresses:
            self.generator.add_route(f"{address}/32", dev="g0", via="10.250.0.2")
        self._send(self._targets)

    def _mac(self, ifname: str) -> str:
        return str(json.loads(self.namespace.ip("-j", "link", "show", ifname))[0]["address"])

    def _send(self, targets: list[tuple[str, int]]) -> None:
        with self.generator.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.bind(("10.250.0.1", 40_000))
            sendto = sock.sendto
            for i, target in enumerate(targets):
                for _ in range(50):
                    try:
                        sendto(b"x", target)
                        break
                    except BlockingIOError:  # qdisc full: let the kernel drain
                        sock.settimeout(0.01)
                else:
                    raise RuntimeError(f"could not send datagram {i} to {target}")

    def touch(self, fraction: float, seed: int = 1) -> int:
        """Send one more datagram on ``fraction`` of the entries; returns how many."""
        chosen = random.Random(seed).sample(self._targets, int(len(self._targets) * fraction))
        self._send(chosen)
        return len(chosen)

    def count(self) -> int:
        """Entries in the table (``conntrack -C``)."""
        return int(self.namespace.run(["conntrack", "-C"]).stdout.strip())
