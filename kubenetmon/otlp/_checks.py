"""What a data point must be (DESIGN §4.1), checked field by field; the decode result.

The slow path of the decoder reads points through the protobuf message API
and applies every rule here; the fast path (``_canonical``) shares the tuple
and address checks. Rejections carry a short reason code (a metric label)
and a message for the sender.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from kubenetmon.flows import RECORD_SCHEMA, ConntrackRecord, FlowBatch
from kubenetmon.otlp import _contract as c
from kubenetmon.otlp._limits import MAX_ADDRESS_BYTES

__all__ = ["ByteBoundedCache", "DecodeResult"]


def _no_records() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=RECORD_SCHEMA)


@dataclass
class DecodeResult:
    """What :func:`decode_records` made of one request.

    ``table`` holds the accepted records as an Arrow record batch in
    :data:`~kubenetmon.flows.RECORD_SCHEMA` (what the receiver hands on);
    :attr:`records` is the same as rows (the row-wise helper: tests, tools).
    ``errors`` holds one human-readable message per distinct reason;
    ``rejected_by_reason`` counts rejected points by a short reason code
    (fit for a metric label).
    """

    table: pa.RecordBatch = field(default_factory=_no_records)
    rejected_points: int = 0
    errors: list[str] = field(default_factory=list)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    accepted_points: int = 0
    nodes: list[str] = field(default_factory=list)

    def error_message(self) -> str:
        """One line for OTLP partial success ``error_message``."""
        return "; ".join(self.errors)

    @property
    def records(self) -> list[ConntrackRecord]:
        """The accepted records as rows (several Python objects per record: not for the hot path)."""
        return FlowBatch(records=self.table).records


class _Rejections:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.messages: dict[str, str] = {}

    def add(self, reason: str, message: str, points: int = 1) -> None:
        if points <= 0:
            return
        self.counts[reason] = self.counts.get(reason, 0) + points
        if reason not in self.messages:  # values come from the sender: keep the answer short
            self.messages[reason] = message if len(message) <= 300 else message[:297] + "..."


class _Reject(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _NotCanonical(Exception):
    """A metric's bytes are not in the layout the fast path reads: use the slow path."""


# --- addresses and ports ---------------------------------------------------------------


class ByteBoundedCache(dict[Any, Any]):
    """A dict emptied when the bytes it holds pass ``budget`` (issue 16: bounded by size, not count).

    ``put`` charges an estimate of what an entry keeps alive; callers bound
    the size of keys before caching them. Emptying all at once is cheap and
    keeps lookups plain dict hits; ``clears`` counts how often it happened.
    Dict operations are atomic under the GIL, which is all the receiver's
    threads need (a race can only over- or under-charge an estimate).
    """

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget
        self.nbytes = 0
        self.clears = 0

    def put(self, key: Any, value: Any, size: int) -> None:
        if self.nbytes + size > self.budget:
            self.clear()
            self.nbytes = 0
            self.clears += 1
        self[key] = value
        self.nbytes += size


# Bytes an entry keeps alive besides its key's own length (dict slot, str
# or bytes headers, the value): measured with sys.getsizeof, rounded up.
_ENTRY_OVERHEAD = 200


class _Addresses(ByteBoundedCache):
    """Address text → canonical ``inet_ntop`` form, or None when not an IP address."""

    def __missing__(self, text: str) -> str | None:
        canonical: str | None = None
        family = socket.AF_INET6 if ":" in text else socket.AF_INET
        try:
            canonical = socket.inet_ntop(family, socket.inet_pton(family, text))
        except (OSError, ValueError):
            canonical = None
        self.put(text, canonical, 2 * len(text) + _ENTRY_OVERHEAD)
        return canonical


ADDRESS_CACHE_BYTES = 32 * 1024 * 1024
_ADDRESSES = _Addresses(ADDRESS_CACHE_BYTES)


def _show(text: str, limit: int = 64) -> str:
    """``repr`` of a sender's value, cut before it is built: values can be megabytes."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _address(text: str, network_type: str, key: str) -> str:
    if len(text) > MAX_ADDRESS_BYTES:
        # Never parsed nor cached: twenty 20 MiB strings once grew RSS by 600 MiB.
        raise _Reject(
            "attribute_too_long",
            f"attribute {key} is {len(text)} characters; an address has at most {MAX_ADDRESS_BYTES}",
        )
    canonical: str | None = _ADDRESSES[text]
    if canonical is None:
        raise _Reject("bad_address", f"attribute {key}={_show(text)} is not an IP address")
    if (":" in canonical) != (network_type == "ipv6"):
        raise _Reject("bad_address", f"attribute {key}={_show(text)} is not an {network_type} address")
    return canonical


# --- slow path: field by field ---------------------------------------------------------

_STRING_ATTRS = {
    c.ATTR_NETWORK_TRANSPORT: 0,
    c.ATTR_NETWORK_TYPE: 1,
    c.ATTR_SRC_ADDRESS: 2,
    c.ATTR_DST_ADDRESS: 4,
    c.ATTR_REPLY_SRC_ADDRESS: 6,
    c.ATTR_REPLY_DST_ADDRESS: 8,
    c.ATTR_DIRECTION: 10,
}
_INT_ATTRS = {
    c.ATTR_SRC_PORT: 3,
    c.ATTR_DST_PORT: 5,
    c.ATTR_REPLY_SRC_PORT: 7,
    c.ATTR_REPLY_DST_PORT: 9,
}
_SLOT_NAMES = [
    c.ATTR_NETWORK_TRANSPORT, c.ATTR_NETWORK_TYPE, c.ATTR_SRC_ADDRESS, c.ATTR_SRC_PORT,
    c.ATTR_DST_ADDRESS, c.ATTR_DST_PORT, c.ATTR_REPLY_SRC_ADDRESS, c.ATTR_REPLY_SRC_PORT,
    c.ATTR_REPLY_DST_ADDRESS, c.ATTR_REPLY_DST_PORT, c.ATTR_DIRECTION,
]
_TRANSPORTS = ("tcp", "udp")
_NETWORK_TYPES = ("ipv4", "ipv6")


def _tuple_key(slots: list[Any]) -> tuple[Any, ...]:
    """Validated (transport, type, src, sport, dst, dport, rsrc, rsport, rdst, rdport)."""
    transport, network_type = slots[0], slots[1]
    for i in (0, 1, 2, 3, 4, 5):
        if slots[i] is None:
            raise _Reject("missing_attribute", f"data point has no {_SLOT_NAMES[i]} attribute")
    if transport not in _TRANSPORTS:
        raise _Reject("bad_attribute_value", f"network.transport={_show(transport)} is not tcp or udp")
    if network_type not in _NETWORK_TYPES:
        raise _Reject("bad_attribute_value", f"network.type={_show(network_type)} is not ipv4 or ipv6")
    reply_present = [slots[i] is not None for i in (6, 7, 8, 9)]
    if any(reply_present) and not all(reply_present):
        raise _Reject(
            "incomplete_reply_tuple",
            "kubenetmon.reply.* attributes must be all four present (NAT) or all absent (mirror)",
        )
    for i in (3, 5, 7, 9):
        port = slots[i]
        if port is not None and not 0 <= port <= 65535:
            raise _Reject("bad_port", f"attribute {_SLOT_NAMES[i]}={port} is not a port (0..65535)")
    src = _address(slots[2], network_type, _SLOT_NAMES[2])
    dst = _address(slots[4], network_type, _SLOT_NAMES[4])
    if reply_present[0]:
        rsrc = _address(slots[6], network_type, _SLOT_NAMES[6])
        rdst = _address(slots[8], network_type, _SLOT_NAMES[8])
        return (transport, network_type, src, slots[3], dst, slots[5], rsrc, slots[7], rdst, slots[9])
    return (transport, network_type, src, slots[3], dst, slots[5], dst, slots[5], src, slots[3])


def _read_point_slow(dp: Any) -> tuple[tuple[Any, ...], bool, int, int, int]:
    """(tuple key, is_reply, start, end, value) of one data point, or _Reject.

    Checks run in the fast path's order (attributes, then times and value are
    the caller's) so that a point breaking several rules gets the same reason
    on both paths.
    """
    slots: list[Any] = [None] * 11
    for kv in dp.attributes:
        key = kv.key
        slot = _STRING_ATTRS.get(key)
        if slot is not None:
            v = kv.value
            if v.WhichOneof("value") != "string_value":
                raise _Reject("wrong_attribute_type", f"attribute {key} must be a string")
            slots[slot] = v.string_value
            continue
        slot = _INT_ATTRS.get(key)
        if slot is not None:
            v = kv.value
            if v.WhichOneof("value") != "int_value":
                raise _Reject("wrong_attribute_type", f"attribute {key} must be an int")
            slots[slot] = v.int_value
        # Unknown attributes are ignored: later versions of the contract may add some.
    direction = slots[10]
    if direction == c.DIRECTION_ORIGINAL:
        is_reply = False
    elif direction == c.DIRECTION_REPLY:
        is_reply = True
    else:
        shown = direction if direction is None else _show(direction)
        raise _Reject(
            "bad_direction", f"kubenetmon.conntrack.direction={shown} is not original or reply"
        )
    key_ = _tuple_key(slots)
    which = dp.WhichOneof("value")
    if which != "as_int":
        raise _Reject("wrong_value_type", f"data point value is {which or 'missing'}; the contract sends as_int")
    return key_, is_reply, dp.start_time_unix_nano, dp.time_unix_nano, dp.as_int
