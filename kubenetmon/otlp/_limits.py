"""What the decoder accepts beyond the shape of a data point: times, deltas, sizes (issue 16).

One bad point must never cost other points: a time ClickHouse cannot store
fails the insert of a whole block, and a counter no link could carry makes
sums overflow downstream. Such points are rejected here, alone, with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_BYTES_PER_SECOND",
    "DEFAULT_MAX_PACKETS_PER_SECOND",
    "MAX_ADDRESS_BYTES",
    "MAX_BATCH_ID_BYTES",
    "MAX_NODE_NAME_BYTES",
    "MAX_TIME_NS",
    "DecodeLimits",
]

SECOND_NS = 1_000_000_000
_UINT64_MAX = 2**64 - 1

# The last second a ClickHouse ``DateTime`` (UInt32 seconds) can hold,
# 2106-02-07; ``Date`` ends in 2149, ``DateTime64(9)`` in 2262. A time past
# it fails the whole insert, so it is never accepted, whatever the window.
MAX_TIME_NS = (2**32 - 1) * SECOND_NS

# 400 Gbit/s, the fastest NIC in common use, and its packet rate at the
# minimum Ethernet frame (64 bytes + 20 of preamble and gap) rounded up.
DEFAULT_MAX_BYTES_PER_SECOND = 400 * 10**9 // 8
DEFAULT_MAX_PACKETS_PER_SECOND = 600_000_000

# An IPv6 address in text is at most 45 characters (IPv4-mapped, full form);
# anything longer is rejected before it is parsed or cached.
MAX_ADDRESS_BYTES = 64
# A Kubernetes node name is a DNS subdomain: at most 253 characters.
MAX_NODE_NAME_BYTES = 253
# The exporter's ids are "<16-hex-digit block id>[:<part>]"; 128 leaves room
# for other senders while keeping the dedup window small.
MAX_BATCH_ID_BYTES = 128


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds a data point must respect, besides the contract's shape.

    ``max_age_ns`` / ``max_future_ns``: the point's ``time_unix_nano`` must lie
    in ``[now - max_age_ns, now + max_future_ns]``; ``None`` disables that side
    (library use on recorded data). Times past :data:`MAX_TIME_NS`, a zero
    start and a start after the end are always rejected.

    ``max_bytes_per_second`` / ``max_packets_per_second``: the largest delta of
    one tuple and direction is this rate times the interval (at least one
    second), so a corrupt or hostile counter is rejected alone.
    """

    max_age_ns: int | None = None
    max_future_ns: int | None = None
    max_bytes_per_second: int = DEFAULT_MAX_BYTES_PER_SECOND
    max_packets_per_second: int = DEFAULT_MAX_PACKETS_PER_SECOND

    def caps(self, start_ns: int, end_ns: int) -> tuple[int, int]:
        """Largest byte and packet delta a link could carry over ``[start_ns, end_ns]``."""
        span = max(end_ns - start_ns, SECOND_NS)
        # Never above what the uint64 counter columns hold (long intervals without a window).
        return (min(self.max_bytes_per_second * span // SECOND_NS, _UINT64_MAX),
                min(self.max_packets_per_second * span // SECOND_NS, _UINT64_MAX))

    def time_problem(self, start_ns: int, end_ns: int, now_ns: int) -> tuple[str, str] | None:
        """``(reason, message)`` when the interval is not acceptable, else None."""
        if not start_ns or not end_ns or start_ns > end_ns:
            return "bad_interval", (
                f"start_time_unix_nano={start_ns} time_unix_nano={end_ns}: both are required and start <= time"
            )
        if end_ns > MAX_TIME_NS:
            return "time_out_of_range", (
                f"time_unix_nano={end_ns} is after 2106-02-07, the last time the store can hold"
            )
        if self.max_future_ns is not None and end_ns > now_ns + self.max_future_ns:
            return "time_in_future", (
                f"time_unix_nano={end_ns} is {(end_ns - now_ns) / SECOND_NS:.0f} s ahead of the gateway's clock "
                f"(limit {self.max_future_ns / SECOND_NS:.0f} s): check the sender's clock"
            )
        # The start too: it bounds the interval, hence the largest delta accepted.
        if self.max_age_ns is not None and start_ns < now_ns - self.max_age_ns:
            return "time_too_old", (
                f"start_time_unix_nano={start_ns} is {(now_ns - start_ns) / SECOND_NS:.0f} s old "
                f"(limit {self.max_age_ns / SECOND_NS:.0f} s): too old to be stored"
            )
        return None
