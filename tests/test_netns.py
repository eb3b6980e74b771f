"""kubenetmon.netns against the real kernel (root, network namespaces)."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from kubenetmon import netns
from kubenetmon.netns import Namespace, NamespaceError, NamespaceRegistry, veth_pair

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def _inode(path: str) -> int:
    return os.stat(path).st_ino


def _udp_exchange(client: Namespace, server: Namespace, address: str) -> bytes:
    """Send one datagram from ``client`` to ``server`` and get the echo back."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with server.entered():
        srv = socket.socket(family, socket.SOCK_DGRAM)
    with client.entered():
        cli = socket.socket(family, socket.SOCK_DGRAM)
    with srv, cli:
        srv.bind((address, 0))
        cli.settimeout(2)
        srv.settimeout(2)
        cli.sendto(b"ping", srv.getsockname()[:2])
        data, peer = srv.recvfrom(100)
        srv.sendto(data, peer)
        return cli.recv(100)


def test_registry_creates_and_tears_down_even_on_error() -> None:
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), NamespaceRegistry("knmct") as reg:
        names.append(reg.create("a").name)
        names.append(reg.create("b").name)
        assert all(netns.namespace_exists(n) for n in names)
        assert set(names) <= set(netns.list_namespaces())
        raise RuntimeError("boom")
    assert names and not any(netns.namespace_exists(n) for n in names)


def test_close_is_idempotent_and_delete_of_missing_namespace_is_fine() -> None:
    reg = NamespaceRegistry("knmct")
    ns = reg.create("x")
    reg.close()
    reg.close()
    assert not ns.exists()
    ns.delete()


def test_new_namespace_has_loopback_up_and_dad_off() -> None:
    with NamespaceRegistry("knmct") as reg:
        ns = reg.create("lo")
        assert "UP" in ns.ip("link", "show", "lo")
        assert ns.get_sysctl("net.ipv6.conf.default.accept_dad") == "0"


def test_veth_v4_and_v6_connectivity_with_route() -> None:
    with NamespaceRegistry("knmct") as reg:
        a, r, b = reg.create("a"), reg.create("r"), reg.create("b")
        veth_pair(a, "a0", r, "ra")
        veth_pair(r, "rb", b, "b0")
        a.add_address("a0", "10.201.1.1/24")
        a.add_address("a0", "fd00:201:1::1/64")
        r.add_address("ra", "10.201.1.254/24")
        r.add_address("ra", "fd00:201:1::fe/64")
        r.add_address("rb", "10.201.2.254/24")
        r.add_address("rb", "fd00:201:2::fe/64")
        b.add_address("b0", "10.201.2.1/24")
        b.add_address("b0", "fd00:201:2::1/64")
        r.enable_forwarding()
        a.add_route("default", via="10.201.1.254")
        a.add_route("default", via="fd00:201:1::fe")
        b.add_route("10.201.1.0/24", via="10.201.2.254")
        b.add_route("fd00:201:1::/64", dev="b0", via="fd00:201:2::fe")
        assert _udp_exchange(a, b, "10.201.2.1") == b"ping"
        assert _udp_exchange(a, b, "fd00:201:2::1") == b"ping"


def test_sysctls_are_per_namespace_and_tracking_enables_counters() -> None:
    with NamespaceRegistry("knmct") as reg:
        a, b = reg.create("a"), reg.create("b")
        veth_pair(a, "a0", b, "b0")
        a.add_address("a0", "10.202.0.1/24")
        b.add_address("b0", "10.202.0.2/24")
        assert b.get_sysctl("net.netfilter.nf_conntrack_acct") == "0"
        b.track_connections()
        assert b.get_sysctl("net.netfilter.nf_conntrack_acct") == "1"
        assert b.get_sysctl("net.netfilter.nf_conntrack_events") == "1"
        assert a.get_sysctl("net.netfilter.nf_conntrack_acct") == "0"
        _udp_exchange(a, b, "10.202.0.2")
        out = b.run(["conntrack", "-L", "-p", "udp"]).stdout
        assert "10.202.0.1" in out and "bytes=" in out
        with pytest.raises(ValueError, match="per-namespace"):
            b.set_sysctls({"kernel.hostname": "x"})


def test_entered_moves_the_calling_thread_and_back_and_sockets_stay() -> None:
    own = _inode("/proc/thread-self/ns/net")
    with NamespaceRegistry("knmct") as reg:
        ns = reg.create("e")
        ns.add_address("lo", "10.203.0.1/32")
        seen_by_other: list[int] = []
        go = threading.Event()

        def look() -> None:
            go.wait(5)
            seen_by_other.append(_inode("/proc/thread-self/ns/net"))

        t = threading.Thread(target=look)
        t.start()  # running before the block: unaffected by it
        with ns.entered():
            assert _inode("/proc/thread-self/ns/net") == _inode(str(ns.path))
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            go.set()
            t.join()
        assert seen_by_other == [own]
        assert _inode("/proc/thread-self/ns/net") == own
        # The socket was made inside: it can bind an address that exists only there.
        sock.bind(("10.203.0.1", 0))
        sock.close()
        assert ns.call(lambda: _inode("/proc/thread-self/ns/net")) == _inode(str(ns.path))


def test_errors_name_the_command_and_the_namespace() -> None:
    with pytest.raises(NamespaceError, match="does not exist"), netns.entered("knmct-missing-ns"):
        pass
    with NamespaceRegistry("knmct") as reg:
        ns = reg.create("err")
        with pytest.raises(NamespaceError, match="nosuchdev"):
            ns.set_up("nosuchdev")
        assert ns.run(["false"], check=False).returncode == 1


def test_delete_stale_removes_leftovers_by_prefix() -> None:
    leftover = Namespace.create(f"knmct-stale-{os.getpid()}")
    assert leftover.name in netns.delete_stale(f"knmct-stale-{os.getpid()}")
    assert not leftover.exists()
