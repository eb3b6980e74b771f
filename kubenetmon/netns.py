"""Network-namespace primitives: create, wire, configure, enter and tear down.

Used by the conntrack receiver (``netns:`` config key), by the kernel tests,
the end-to-end mini-cluster and the demo. Pure stdlib; it drives the ``ip``
and ``nft`` commands and calls ``setns(2)`` through ``ctypes``. Everything
needs root (``CAP_SYS_ADMIN`` + ``CAP_NET_ADMIN``).

A typical test topology::

    with NamespaceRegistry("knmct") as reg:
        client, server = reg.create("cli"), reg.create("srv")
        veth_pair(client, "c0", server, "s0")
        client.add_address("c0", "10.91.0.1/24")
        server.add_address("s0", "10.91.0.2/24")
        server.track_connections()          # acct=1, events=1, nft ct rules
        server.run(["ping", "-c1", "10.91.0.1"])
        with server.entered():              # sockets made here live in `server`
            sock = socket.socket(...)
    # every namespace (and the veths inside) is gone here, even after an exception

API stability: other components build on this module. Add, don't change:
:class:`Namespace`, :class:`NamespaceRegistry`, :func:`veth_pair`,
:func:`entered`, :func:`namespace_exists`, :func:`list_namespaces`,
:func:`delete_stale` and :data:`TRACKING_RULESET` keep their signatures.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import ipaddress
import os
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = [
    "NETNS_DIR",
    "TRACKING_RULESET",
    "Namespace",
    "NamespaceError",
    "NamespaceRegistry",
    "delete_stale",
    "entered",
    "list_namespaces",
    "namespace_exists",
    "netns_path",
    "veth_pair",
]

T = TypeVar("T")

#: Where ``ip netns`` keeps the bind mounts that name namespaces.
NETNS_DIR = Path("/var/run/netns")

_CLONE_NEWNET = 0x40000000

#: nft ruleset that makes a namespace track connections: any rule using a
#: ``ct`` expression registers conntrack hooks for the namespace. It accepts
#: everything (the ``ct state`` rules only exist to pull conntrack in), on
#: input, output and forward (for namespaces that route for others).
TRACKING_RULESET = """\
table inet knm_track {
  chain input { type filter hook input priority 0; policy accept; ct state established,related accept; }
  chain output { type filter hook output priority 0; policy accept; ct state established,related accept; }
  chain forward { type filter hook forward priority 0; policy accept; ct state established,related accept; }
}
"""


class NamespaceError(RuntimeError):
    """A namespace operation failed; the message carries the command and its stderr."""


def netns_path(name: str) -> Path:
    """The bind-mount path of a named namespace (``/var/run/netns/<name>``)."""
    return NETNS_DIR / name


def namespace_exists(name: str) -> bool:
    return netns_path(name).exists()


def list_namespaces() -> list[str]:
    """Names of every named namespace (``ip netns list``), sorted."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def _run(args: Sequence[str], *, input: str | None = None, timeout: float = 30.0) -> str:
    try:
        done = subprocess.run(
            list(args), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise NamespaceError(
            f"{args[0]!r} not found; install iproute2 and nftables (scripts/setup does)"
        ) from exc
    if done.returncode != 0:
        raise NamespaceError(f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


_libc: list[ctypes.CDLL] = []


def _setns(fd: int) -> None:
    if not _libc:
        _libc.append(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True))
    if _libc[0].setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(f"setns failed: {os.strerror(err)} (needs CAP_SYS_ADMIN)")


@contextlib.contextmanager
def entered(name_or_path: str | Path) -> Iterator[None]:
    """Move the **calling thread** into a network namespace for the block.

    Sockets created inside stay in that namespace after the block ends, which
    is how the conntrack receiver opens netlink sockets of another namespace.
    ``name_or_path`` is a name under :data:`NETNS_DIR` or a path such as
    ``/proc/<pid>/ns/net``. Only this thread moves; other threads are
    unaffected, except threads *started* inside the block, which inherit
    the namespace and keep it.
    """
    target = Path(name_or_path) if "/" in str(name_or_path) else netns_path(str(name_or_path))
    try:
        target_fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NamespaceError(f"network namespace {str(name_or_path)!r} does not exist ({target})") from exc
    own_fd = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target_fd)
        try:
            yield
        finally:
            _setns(own_fd)
    finally:
        os.close(target_fd)
        os.close(own_fd)


class Namespace:
    """A named network namespace (``ip netns``); cheap handle, no state of its own.

    Creating the handle does nothing; use :meth:`create` (or a
    :class:`NamespaceRegistry`) to make the namespace.
    """

    def __init__(self, name: str) -> None:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"invalid namespace name {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    @property
    def path(self) -> Path:
        return netns_path(self.name)

    def exists(self) -> bool:
        return self.path.exists()

    # --- life -------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, *, loopback: bool = True, ipv6_dad: bool = False) -> Namespace:
        """Create the namespace, bring ``lo`` up and (by default) switch off IPv6 DAD.

        With DAD off, IPv6 addresses are usable at once instead of staying
        "tentative" for a second or more.
        """
        ns = cls(name)
        _run(["ip", "netns", "add", name])
        try:
            if loopback:
                ns.ip("link", "set", "lo", "up")
            if not ipv6_dad:
                ns.set_sysctls({"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0})
        except BaseException:
            ns.delete()
            raise
        return ns

    def delete(self) -> None:
        """Delete the namespace (its veths go with it); a missing one is fine."""
        if self.exists():
            with contextlib.suppress(NamespaceError):
                _run(["ip", "netns", "delete", self.name])
            if self.exists():  # a stale mount point without a namespace behind it
                with contextlib.suppress(OSError):
                    self.path.unlink()

    # --- commands ---------------------------------------------------------------

    def ip(self, *args: str) -> str:
        """Run ``ip -n <ns> ARGS`` and return its stdout."""
        return _run(["ip", "-n", self.name, *args])

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float | None = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (``ip netns exec``), capturing text output.

        With ``check`` a non-zero exit raises :class:`NamespaceError` with the
        command's stderr.
        """
        cmd = ["ip", "netns", "exec", self.name, *args]
        done = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False,
            env=dict(env) if env is not None else None,
        )
        if check and done.returncode != 0:
            raise NamespaceError(
                f"`{' '.join(cmd)}` failed ({done.returncode}): {(done.stderr or done.stdout).strip()}"
            )
        return done

    def popen(self, args: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a long-running command inside the namespace; the caller owns the process."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], **kwargs)  # type: ignore[call-overload, no-any-return]

    def entered(self) -> contextlib.AbstractContextManager[None]:
        """Context manager moving the calling thread into this namespace (see :func:`entered`)."""
        return entered(self.name)

    def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run ``fn(*args, **kwargs)`` inside the namespace and return its result.

        Runs in the calling thread for the duration of the call (via
        :func:`entered`), so exceptions propagate as usual.
        """
        with self.entered():
            return fn(*args, **kwargs)

    # --- configuration ----------------------------------------------------------

    def set_up(self, ifname: str) -> None:
        self.ip("link", "set", ifname, "up")

    def add_address(self, ifname: str, cidr: str) -> None:
        """Add ``cidr`` (``10.0.0.1/24`` or ``fd00::1/64``) to an interface; v6 skips DAD."""
        iface = ipaddress.ip_interface(cidr)
        extra = ["nodad"] if iface.version == 6 else []
        self.ip("addr", "add", str(iface), "dev", ifname, *extra)

    def add_route(self, destination: str, *, via: str | None = None, dev: str | None = None) -> None:
        """Add a route (``default`` or a CIDR) via a gateway and/or out of a device."""
        if via is None and dev is None:
            raise ValueError("add_route needs via= or dev=")
        family = ["-6"] if (via and ":" in via) or ":" in destination else []
        args = [*family, "route", "add", destination]
        if via:
            args += ["via", via]
        if dev:
            args += ["dev", dev]
        self.ip(*args)

    @staticmethod
    def _sysctl_file(key: str) -> Path:
        return Path("/proc/sys") / key.replace(".", "/")

    def get_sysctl(self, key: str) -> str:
        """Read a per-namespace sysctl (``net.netfilter.nf_conntrack_acct``)."""
        return self.call(lambda: self._sysctl_file(key).read_text().strip())

    def set_sysctls(self, values: Mapping[str, int | str]) -> None:
        """Write per-namespace sysctls (``net.*`` keys only; others are global)."""
        for key in values:
            if not key.startswith("net."):
                raise ValueError(f"{key!r} is not a per-namespace sysctl; only net.* keys are")

        def write() -> None:
            for key, value in values.items():
                self._sysctl_file(key).write_text(f"{value}\n")

        try:
            self.call(write)
        except OSError as exc:
            raise NamespaceError(f"cannot set sysctls {dict(values)} in {self.name}: {exc}") from exc

    def enable_forwarding(self) -> None:
        """Route between interfaces (IPv4 and IPv6)."""
        self.set_sysctls({"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1})

    def nft(self, ruleset: str) -> None:
        """Load an nft ruleset (text, as for ``nft -f``) into this namespace."""
        self.run(["nft", "-f", "-"], input=ruleset)

    def track_connections(self, *, accounting: bool = True, events: bool = True) -> None:
        """Make the namespace track connections with byte/packet counters and events.

        New namespaces start with ``nf_conntrack_acct=0`` (entries created
        then never get counters) and ``nf_conntrack_events=2``; set both
        first, then load :data:`TRACKING_RULESET`.
        """
        self.set_sysctls({
            "net.netfilter.nf_conntrack_acct": int(accounting),
            "net.netfilter.nf_conntrack_events": int(events),
        })
        self.nft(TRACKING_RULESET)


def veth_pair(a: Namespace, a_ifname: str, b: Namespace, b_ifname: str, *, up: bool = True) -> None:
    """Create a veth pair with one end in each namespace (names ≤ 15 characters)."""
    for ifname in (a_ifname, b_ifname):
        if not 0 < len(ifname) <= 15:
            raise ValueError(f"interface name {ifname!r} must have 1 to 15 characters")
    _run(["ip", "link", "add", a_ifname, "netns", a.name, "type", "veth",
          "peer", "name", b_ifname, "netns", b.name])
    if up:
        a.set_up(a_ifname)
        b.set_up(b_ifname)


def delete_stale(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with ``prefix`` (left by a killed run)."""
    if not prefix:
        raise ValueError("delete_stale needs a non-empty prefix")
    gone = [name for name in list_namespaces() if name.startswith(prefix)]
    for name in gone:
        Namespace(name).delete()
    return gone


class NamespaceRegistry:
    """Creates namespaces with a common prefix and guarantees their teardown.

    ``create("srv")`` makes ``<prefix>-<token>-srv``, where the token is
    random per registry so parallel runs do not collide. Leaving the ``with``
    block (normally or by an exception), :meth:`close`, or interpreter exit
    deletes every namespace it created, newest first.
    """

    def __init__(self, prefix: str) -> None:
        if not prefix or "/" in prefix:
            raise ValueError(f"invalid prefix {prefix!r}")
        self.prefix = prefix
        self.token = secrets.token_hex(3)
        self._created: list[Namespace] = []
        self._lock = threading.Lock()
        atexit.register(self.close)

    def __enter__(self) -> NamespaceRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def name_for(self, role: str) -> str:
        return f"{self.prefix}-{self.token}-{role}"

    def create(self, role: str, **kwargs: bool) -> Namespace:
        """Create and remember ``<prefix>-<token>-<role>``; kwargs go to :meth:`Namespace.create`."""
        ns = Namespace.create(self.name_for(role), **kwargs)
        with self._lock:
            self._created.append(ns)
        return ns

    @property
    def namespaces(self) -> list[Namespace]:
        with self._lock:
            return list(self._created)

    def close(self) -> None:
        """Delete every namespace created here (idempotent)."""
        with self._lock:
            created, self._created = self._created, []
        for ns in reversed(created):
            ns.delete()
        atexit.unregister(self.close)
