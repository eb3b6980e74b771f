"""Builds ctnetlink messages byte for byte, for parser and accounting tests without a kernel.

The kernel's own layout (checked against real dumps in the kernel tests) is
the default; options produce the unusual layouts the generic fallback must
handle: counters in the other order or apart, 32-bit counters, extra
attributes, zones inside tuples, other protocols.
"""

from __future__ import annotations

import ipaddress
import struct

CT_NEW, CT_DELETE = 0x100, 0x102
NESTED = 0x8000


def nla(type_: int, payload: bytes, nested: bool = False) -> bytes:
    length = 4 + len(payload)
    pad = (-length) % 4
    return struct.pack("<HH", length, type_ | (NESTED if nested else 0)) + payload + b"\0" * pad


def tuple_attr(  # noqa: PLR0917 - mirrors the tuple's fields in order
    type_: int, src: str, dst: str, proto: int, sport: int, dport: int, zone: int | None = None
) -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    v6 = a.version == 6
    ip = nla(1, nla(3 if v6 else 1, a.packed) + nla(4 if v6 else 2, b.packed), nested=True)
    ports = nla(1, bytes([proto])) + nla(2, struct.pack(">H", sport)) + nla(3, struct.pack(">H", dport))
    body = ip + nla(2, ports, nested=True)
    if zone is not None:
        body += nla(3, struct.pack(">H", zone))
    return nla(type_, body, nested=True)


def counters_attr(type_: int, packets: int, bytes_: int, bits: int = 64) -> bytes:
    if bits == 64:
        body = nla(1, struct.pack(">Q", packets)) + nla(2, struct.pack(">Q", bytes_))
    else:
        body = nla(3, struct.pack(">I", packets)) + nla(4, struct.pack(">I", bytes_))
    return nla(type_, body, nested=True)


def entry(
    src: str = "10.0.0.1", sport: int = 40000, dst: str = "10.0.0.2", dport: int = 80,
    counters: tuple[int, int, int, int] = (0, 0, 0, 0),  # orig packets, orig bytes, reply packets, reply bytes
    *, proto: int = 6, ct_id: int = 1, reply: tuple[str, int, str, int] | None = None,
    msg_type: int = CT_NEW, order: str = "kernel", counter_bits: int = 64, zone: int | None = None,
    extra: bytes = b"", with_counters: bool = True, start: int | None = None, stop: int | None = None,
) -> bytes:
    """One conntrack message; ``order``: ``kernel``, ``reply_counters_first`` or ``counters_apart``.

    ``start``/``stop``: ``CTA_TIMESTAMP`` (``nf_conntrack_timestamp=1``); DESTROY events carry both.
    """
    rsrc, rsport, rdst, rdport = reply or (dst, dport, src, sport)
    orig_t = tuple_attr(1, src, dst, proto, sport, dport, zone)
    reply_t = tuple_attr(2, rsrc, rdst, proto, rsport, rdport, zone)
    status = nla(3, struct.pack(">I", 0xE))
    ident = nla(12, struct.pack(">I", ct_id))
    timeout = nla(7, struct.pack(">I", 100))
    c_orig = counters_attr(9, counters[0], counters[1], counter_bits)
    c_reply = counters_attr(10, counters[2], counters[3], counter_bits)
    if not with_counters:
        c_orig = c_reply = b""
    if start is not None:
        times = nla(1, struct.pack(">Q", start)) + (b"" if stop is None else nla(2, struct.pack(">Q", stop)))
        c_reply += nla(20, times, nested=True)
    if order == "kernel":
        body = orig_t + reply_t + status + nla(8, bytes(4)) + ident + nla(11, struct.pack(">I", 1)) + timeout
        body += extra + c_orig + c_reply
    elif order == "reply_counters_first":
        body = orig_t + reply_t + status + ident + extra + c_reply + c_orig
    elif order == "counters_apart":
        body = orig_t + reply_t + c_orig + status + ident + extra + c_reply + timeout
    else:
        raise ValueError(order)
    family = 10 if ":" in src else 2
    header = struct.pack("<IHHII", 20 + len(body), msg_type, 0x2, 1, 0) + struct.pack("<BBH", family, 0, 0)
    return header + body
