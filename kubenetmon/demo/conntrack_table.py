"""Ground truth: what a node namespace's conntrack table counted, read with ``conntrack -L``.

Independent of the ``conntrack`` receiver on purpose (another reader, the C
``conntrack-tools``), so the end-to-end tests compare the pipeline against
the kernel, not against itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from kubenetmon.netns import Namespace

__all__ = ["ConntrackEntry", "DestroyRecorder", "parse_conntrack_listing", "read_conntrack"]

_TRANSPORTS = ("tcp", "udp")


@dataclass(frozen=True)
class ConntrackEntry:
    """One conntrack entry: both tuples and their counters, as ``conntrack -L -o extended,id`` prints."""

    id: int
    network_type: str  # "ipv4" | "ipv6"
    transport: str  # "tcp" | "udp"
    src: str
    sport: int
    dst: str
    dport: int
    reply_src: str
    reply_sport: int
    reply_dst: str
    reply_dport: int
    original_bytes: int
    original_packets: int
    reply_bytes: int
    reply_packets: int

    @property
    def key(self) -> tuple[int, str, int, str, int, str]:
        """Identity of the connection across dumps (id alone can be reused after destroy)."""
        return (self.id, self.src, self.sport, self.dst, self.dport, self.transport)


def _canonical(address: str) -> str:
    return str(ipaddress.ip_address(address))


def parse_conntrack_listing(text: str) -> list[ConntrackEntry]:
    """Parse ``conntrack -L -o extended,id`` output; keeps TCP and UDP entries with counters.

    Raises ``ValueError`` naming the line when a TCP/UDP entry has no byte
    counters: accounting was off when the entry was created, so the table
    cannot serve as ground truth.
    """
    entries: list[ConntrackEntry] = []
    for line in text.splitlines():
        tokens = line.split()
        if tokens and tokens[0].startswith("["):  # an event: "[DESTROY] ipv4 2 tcp 6 …"
            tokens = tokens[1:]
        if len(tokens) < 4 or tokens[0] not in ("ipv4", "ipv6") or tokens[2] not in _TRANSPORTS:
            continue
        fields: dict[str, list[str]] = {}
        for token in tokens:
            key, sep, value = token.partition("=")
            if sep:
                fields.setdefault(key, []).append(value)
        if len(fields.get("bytes", [])) != 2:
            raise ValueError(f"conntrack entry without counters (nf_conntrack_acct was 0?): {line!r}")
        src, dst = fields["src"], fields["dst"]
        sport, dport = fields["sport"], fields["dport"]
        entries.append(ConntrackEntry(
            id=int(fields["id"][0]),
            network_type=tokens[0],
            transport=tokens[2],
            src=_canonical(src[0]), sport=int(sport[0]),
            dst=_canonical(dst[0]), dport=int(dport[0]),
            reply_src=_canonical(src[1]), reply_sport=int(sport[1]),
            reply_dst=_canonical(dst[1]), reply_dport=int(dport[1]),
            original_bytes=int(fields["bytes"][0]), original_packets=int(fields["packets"][0]),
            reply_bytes=int(fields["bytes"][1]), reply_packets=int(fields["packets"][1]),
        ))
    return entries


def read_conntrack(ns: Namespace, families: Iterable[str] = ("ipv4", "ipv6")) -> list[ConntrackEntry]:
    """Every TCP/UDP entry of the namespace's table, both families."""
    entries: list[ConntrackEntry] = []
    for family in families:
        done = ns.run(["conntrack", "-L", "-f", family, "-o", "extended,id"], check=False)
        # conntrack exits 0 or 1 with "0 flow entries" on an empty table.
        if done.returncode not in (0, 1):
            raise RuntimeError(f"conntrack -L in {ns.name} failed: {done.stderr.strip()}")
        entries.extend(parse_conntrack_listing(done.stdout))
    return entries


class DestroyRecorder:
    """Records the final counters of every entry a namespace's table destroys (``conntrack -E``).

    Ground truth for connections that end and expire while a test runs: their
    last bytes exist only in the DESTROY event. Use as a context manager;
    :attr:`entries` is filled when it stops.
    """

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self.entries: list[ConntrackEntry] = []
        # Closed in stop(): the recorder outlives any one block of code.
        self._out = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DestroyRecorder:
        self._proc = self.ns.popen(
            ["conntrack", "-E", "-e", "DESTROY", "-o", "extended,id"],
            stdout=self._out, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[ConntrackEntry]:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)  # conntrack flushes its output on SIGTERM
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(5)
            self._proc = None
            self._out.seek(0)
            self.entries = parse_conntrack_listing(self._out.read().decode(errors="replace"))
            self._out.close()
        return self.entries
