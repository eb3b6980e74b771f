"""Layouts, the generic fallback and the delta rules, on messages built byte for byte."""

from __future__ import annotations

import numpy as np
import pytest

from kubenetmon.flows import ConntrackRecord, FlowBatch
from kubenetmon.receivers.conntrack._accounting import AddressFilter, DeltaTracker
from kubenetmon.receivers.conntrack._layout import LayoutCache, MalformedMessage, compile_layout, decode_counters
from tests.receivers.conntrack.ctmsg import CT_DELETE, entry, nla

SECOND = 10**9


def _cycle(
    tracker: DeltaTracker, *messages: bytes, events: tuple[bytes, ...] = (), at: int = 0
) -> list[ConntrackRecord]:
    tracker.begin_dump(at or (tracker.dump_ns + 5 * SECOND if tracker.dump_ns else SECOND))
    tracker.feed(b"".join(messages))
    tracker.end_dump()
    tracker.apply_events(list(events))
    return _unsent(tracker)


def _unsent(tracker: DeltaTracker) -> list[ConntrackRecord]:
    """The tracker's columnar output, as rows (the row-wise helper)."""
    return FlowBatch(tracker.take_unsent()).records


def _counts(r: ConntrackRecord) -> tuple[int, int, int, int]:
    return r.original_packets, r.original_bytes, r.reply_packets, r.reply_bytes


def test_one_layout_is_learned_per_kind_and_reused() -> None:
    tracker = DeltaTracker("n")
    msgs = [entry(sport=1000 + i, ct_id=i, counters=(1, 100, 1, 50)) for i in range(50)]
    msgs += [entry("fd00::1", 2000 + i, "fd00::2", 443, ct_id=100 + i, proto=17) for i in range(50)]
    _cycle(tracker, *msgs)
    assert tracker.layouts.count == 2
    assert tracker.layouts.slow_path == 2
    assert tracker.stats.entries == 100 and tracker.num_live == 100


@pytest.mark.parametrize(
    "options",
    [
        {"order": "reply_counters_first"},
        {"order": "counters_apart"},
        {"counter_bits": 32},
        {"zone": 7},
        {"extra": nla(22, bytes(16))},  # CTA_LABELS
    ],
    ids=["reply-counters-first", "counters-apart", "32-bit-counters", "zone", "labels"],
)
def test_unusual_layouts_give_the_same_deltas(options: dict[str, object]) -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker, entry(counters=(1, 60, 0, 0), **options))  # type: ignore[arg-type]
    [record] = _cycle(tracker, entry(counters=(11, 1060, 4, 300), **options))  # type: ignore[arg-type]
    assert _counts(record) == (10, 1000, 4, 300)
    assert (record.src, record.sport, record.dst, record.dport) == ("10.0.0.1", 40000, "10.0.0.2", 80)


def test_a_full_layout_cache_still_parses_every_message() -> None:
    tracker = DeltaTracker("n")
    tracker.layouts = LayoutCache(max_layouts=0)
    _cycle(tracker, entry(counters=(1, 1, 1, 1)))
    [record] = _cycle(tracker, entry(counters=(2, 3, 4, 5)))
    assert _counts(record) == (1, 2, 3, 4)
    assert tracker.layouts.count == 0 and tracker.layouts.slow_path == 2


def test_same_length_other_protocol_is_not_taken_for_tcp() -> None:
    tracker = DeltaTracker("n")
    tcp, sctp = entry(counters=(1, 1, 1, 1)), entry(proto=132, ct_id=2, counters=(1, 1, 1, 1))
    assert len(tcp) == len(sctp)
    _cycle(tracker, tcp, sctp)
    assert tracker.stats.ignored == {"protocol": 1}
    assert tracker.num_live == 1


def test_entries_without_counters_are_ignored_with_their_reason() -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker, entry(with_counters=False))
    assert tracker.stats.ignored == {"no_counters": 1}


def test_malformed_message_is_counted_and_the_rest_parsed() -> None:
    good = entry(counters=(1, 1, 1, 1))
    bad = bytearray(entry(ct_id=9))
    bad[20:22] = (400).to_bytes(2, "little")  # first attribute claims more bytes than the message has
    tracker = DeltaTracker("n")
    _cycle(tracker, bytes(bad), good)
    assert tracker.stats.ignored == {"malformed": 1}
    assert tracker.num_live == 1
    with pytest.raises(MalformedMessage):
        compile_layout(bytes(bad), 0, len(bad))


def test_decode_counters_reads_both_forms() -> None:
    std = entry(counters=(1, 2, 3, 4))
    layout = compile_layout(std, 0, len(std))
    assert decode_counters(layout.counters(std, 0)) == (1, 2, 3, 4)
    small = entry(counters=(5, 6, 7, 8), counter_bits=32)
    layout = compile_layout(small, 0, len(small))
    assert decode_counters(layout.counters(small, 0)) == (5, 6, 7, 8)


def test_first_cycle_is_a_baseline_then_deltas() -> None:
    tracker = DeltaTracker("node-x")
    assert _cycle(tracker, entry(counters=(5, 500, 5, 500))) == []
    [record] = _cycle(tracker, entry(counters=(7, 800, 6, 560)))
    assert _counts(record) == (2, 300, 1, 60)
    assert record.node == "node-x" and record.transport == "tcp" and record.network_type == "ipv4"
    assert record.end_ns - record.start_ns == 5 * SECOND
    assert _cycle(tracker, entry(counters=(7, 800, 6, 560))) == []  # idle: nothing sent
    assert tracker.stats.ignored == {"idle": 1}


def test_new_connection_after_the_baseline_counts_in_full() -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker)
    [record] = _cycle(tracker, entry(counters=(3, 180, 2, 120)))
    assert _counts(record) == (3, 180, 2, 120)


def test_a_reused_tuple_with_a_new_id_is_a_new_connection() -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker, entry(ct_id=1, counters=(10, 1000, 10, 1000)))
    [record] = _cycle(tracker, entry(ct_id=2, counters=(1, 60, 1, 60)))
    assert _counts(record) == (1, 60, 1, 60)


def test_an_entry_listed_twice_by_one_dump_is_counted_once() -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker, entry(counters=(1, 100, 0, 0)))
    [record] = _cycle(tracker, entry(counters=(2, 200, 0, 0)), entry(counters=(2, 200, 0, 0)))
    assert _counts(record) == (1, 100, 0, 0)


def test_destroy_event_adds_the_remainder_since_the_last_dump() -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker, entry(counters=(1, 100, 1, 100)))
    [record] = _cycle(tracker, events=(entry(counters=(4, 400, 3, 300), msg_type=CT_DELETE),))
    assert _counts(record) == (3, 300, 2, 200)
    assert tracker.num_live == 0 and tracker.num_vanished == 0 and tracker.num_graves == 1  # a tombstone


def test_destroy_after_the_entry_was_dumped_again_in_the_same_cycle() -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker, entry(counters=(1, 100, 1, 100)))
    [record] = _cycle(
        tracker, entry(counters=(2, 200, 1, 100)), events=(entry(counters=(3, 300, 2, 200), msg_type=CT_DELETE),)
    )
    assert _counts(record) == (2, 200, 1, 100)  # dump delta + event remainder, merged


def test_connection_born_and_gone_between_dumps_counts_in_full() -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker)
    [record] = _cycle(tracker, events=(entry(counters=(9, 900, 8, 800), msg_type=CT_DELETE),))
    assert _counts(record) == (9, 900, 8, 800)


def test_events_before_the_baseline_are_ignored() -> None:
    tracker = DeltaTracker("n")
    assert _cycle(tracker, events=(entry(counters=(9, 900, 8, 800), msg_type=CT_DELETE),)) == []
    assert tracker.stats.ignored == {"no_baseline": 1}


def test_a_late_event_finds_the_vanished_entry_and_a_redump_is_not_recounted() -> None:
    tracker = DeltaTracker("n", vanished_ttl_ns=60 * SECOND)
    _cycle(tracker, entry(counters=(1, 100, 1, 100)))
    assert _cycle(tracker) == []  # vanished: parked
    [record] = _cycle(tracker, events=(entry(counters=(2, 150, 1, 100), msg_type=CT_DELETE),))
    assert _counts(record) == (1, 50, 0, 0)
    assert _cycle(tracker, entry(counters=(2, 150, 1, 100))) == []  # tombstone: no double count


def test_vanished_entries_expire_after_the_ttl() -> None:
    tracker = DeltaTracker("n", vanished_ttl_ns=8 * SECOND)
    _cycle(tracker, entry(counters=(1, 100, 1, 100)))
    _cycle(tracker)
    assert tracker.num_vanished == 1
    _cycle(tracker)
    _cycle(tracker)
    assert tracker.num_vanished == 0
    assert tracker.stats.expired == 1


def test_tombstones_expire_without_counting_as_lost() -> None:
    tracker = DeltaTracker("n", tombstone_ttl_ns=8 * SECOND)
    _cycle(tracker, entry(counters=(1, 100, 1, 100)))
    _cycle(tracker, events=(entry(counters=(2, 200, 1, 100), msg_type=CT_DELETE),))
    assert tracker.num_graves == 1
    expired = 0
    for _ in range(3):
        _cycle(tracker)
        expired += tracker.stats.expired
    assert tracker.num_graves == 0 and expired == 0


def test_counters_zeroed_by_another_tool_count_from_zero() -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker, entry(counters=(10, 1000, 10, 1000)))
    [record] = _cycle(tracker, entry(counters=(1, 60, 0, 0)))
    assert _counts(record) == (1, 60, 0, 0)
    assert tracker.stats.counter_resets == 1


def test_unsent_records_merge_until_taken() -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker, entry(counters=(0, 0, 0, 0)))
    for i in range(1, 4):
        tracker.begin_dump(tracker.dump_ns + 5 * SECOND)
        tracker.feed(entry(counters=(i, 100 * i, 0, 0)))
        tracker.end_dump()
    [record] = _unsent(tracker)
    assert _counts(record) == (3, 300, 0, 0)
    assert record.end_ns - record.start_ns == 15 * SECOND


def test_loopback_and_cidr_filters() -> None:
    tracker = DeltaTracker("n", AddressFilter(include=["10.0.0.0/8"], exclude=["10.9.0.0/16"]))
    _cycle(tracker)
    records = _cycle(
        tracker,
        entry("127.0.0.5", 1, "10.0.0.2", 2, counters=(1, 1, 0, 0), ct_id=1),
        entry("::1", 1, "::1", 2, counters=(1, 1, 0, 0), ct_id=2),
        entry("10.9.0.1", 1, "10.0.0.2", 2, counters=(1, 1, 0, 0), ct_id=3),
        entry("192.168.0.1", 1, "172.16.0.1", 2, counters=(1, 1, 0, 0), ct_id=4),
        entry("10.1.0.1", 1, "172.16.0.1", 2, counters=(1, 1, 0, 0), ct_id=5),
    )
    assert [r.src for r in records] == ["10.1.0.1"]
    assert tracker.stats.ignored == {"loopback": 2, "cidr": 2}


def test_dnat_reply_tuple_is_kept() -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker)
    dnat = entry("10.0.0.1", 5000, "10.96.0.10", 80, reply=("10.1.2.3", 8080, "10.0.0.1", 5000), counters=(1, 1, 1, 1))
    [record] = _cycle(tracker, dnat)
    reply = (record.reply_src, record.reply_sport, record.reply_dst, record.reply_dport)
    assert reply == ("10.1.2.3", 8080, "10.0.0.1", 5000)
    assert not record.is_mirrored()


def test_zero_on_dump_takes_counters_as_deltas() -> None:
    tracker = DeltaTracker("n", zero_on_dump=True)
    [record] = _cycle(tracker, entry(counters=(2, 200, 1, 100)))
    assert _counts(record) == (2, 200, 1, 100)
    assert len(tracker.state) == 0


def test_netlink_constants_agree_with_pyroute2() -> None:
    from pyroute2 import netlink
    from pyroute2.netlink import nfnetlink
    from pyroute2.netlink.nfnetlink import nfctsocket

    from kubenetmon.receivers.conntrack import _layout, _netlink

    assert _netlink.NETLINK_NETFILTER == netlink.NETLINK_NETFILTER
    assert _netlink.NLM_F_DUMP == netlink.NLM_F_DUMP
    assert _netlink.NFNL_SUBSYS_CTNETLINK == nfnetlink.NFNL_SUBSYS_CTNETLINK
    assert (_netlink.IPCTNL_MSG_CT_NEW, _netlink.IPCTNL_MSG_CT_GET, _netlink.IPCTNL_MSG_CT_DELETE) == (
        nfctsocket.IPCTNL_MSG_CT_NEW, nfctsocket.IPCTNL_MSG_CT_GET, nfctsocket.IPCTNL_MSG_CT_DELETE,
    )
    assert _netlink.IPCTNL_MSG_CT_GET_CTRZERO == nfctsocket.IPCTNL_MSG_CT_GET_CTRZERO
    names = [name for name, _ in nfctsocket.nfct_msg.nla_map]
    for ours, name in [
        (_layout.CTA_TUPLE_ORIG, "CTA_TUPLE_ORIG"), (_layout.CTA_TUPLE_REPLY, "CTA_TUPLE_REPLY"),
        (_layout.CTA_COUNTERS_ORIG, "CTA_COUNTERS_ORIG"), (_layout.CTA_COUNTERS_REPLY, "CTA_COUNTERS_REPLY"),
        (_layout.CTA_ID, "CTA_ID"),
    ]:
        assert names.index(name) == ours


def test_an_entry_whose_tuples_do_not_parse_is_skipped_not_fatal() -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker, entry(ct_id=1), entry(sport=2, ct_id=2))
    broken = bytearray(entry(sport=2, ct_id=2, counters=(1, 1, 1, 1)))
    broken[28:30] = (200).to_bytes(2, "little")  # the original source address claims 200 bytes
    records = _cycle(tracker, entry(ct_id=1, counters=(1, 1, 1, 1)), bytes(broken))
    assert [r.sport for r in records] == [40000]
    assert tracker.stats.ignored == {"malformed": 1}


def test_a_replaced_entry_with_the_same_tuple_and_id_is_told_apart_by_its_start_time() -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker, entry(ct_id=7, start=1_000, counters=(10, 1000, 10, 1000)))
    # The source port was reused: the kernel replaced the entry, and the new one got the same id.
    old_end = entry(ct_id=7, start=1_000, stop=2_000, counters=(12, 1200, 11, 1100), msg_type=CT_DELETE)
    records = _cycle(tracker, entry(ct_id=7, start=3_000, counters=(1, 60, 1, 60)), events=(old_end,))
    assert sorted(_counts(r) for r in records) == [(1, 60, 1, 60), (2, 200, 1, 100)]
    assert tracker.stats.counter_resets == 0


def test_destroy_events_received_before_a_dump_are_applied_before_it() -> None:
    tracker = DeltaTracker("n", tombstone_ttl_ns=60 * SECOND)
    _cycle(tracker, entry(ct_id=7, start=1_000, counters=(10, 1000, 10, 1000)))
    tracker.begin_dump(tracker.dump_ns + 5 * SECOND)
    tracker.apply_events([entry(ct_id=7, start=1_000, stop=2_000, counters=(12, 1200, 11, 1100), msg_type=CT_DELETE)])
    # The dump still lists the dying entry (a race), and already its successor on the same tuple and id.
    tracker.feed(entry(ct_id=7, start=1_000, counters=(12, 1200, 11, 1100))
                 + entry(ct_id=7, start=3_000, counters=(1, 60, 1, 60)))
    tracker.end_dump()
    records = _unsent(tracker)
    assert sorted(_counts(r) for r in records) == [(1, 60, 1, 60), (2, 200, 1, 100)]
    assert tracker.stats.counter_resets == 0


def test_events_cannot_be_applied_in_the_middle_of_a_dump() -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker)
    tracker.begin_dump(tracker.dump_ns + SECOND)
    tracker.feed(entry(counters=(1, 1, 1, 1)))
    with pytest.raises(RuntimeError, match="before or after the dump"):
        tracker.apply_events([entry(counters=(2, 2, 2, 2), msg_type=CT_DELETE)])


def test_a_batch_handed_out_does_not_change_when_later_deltas_merge_into_its_rows() -> None:
    tracker = DeltaTracker("n")
    _cycle(tracker, entry(counters=(0, 0, 0, 0)))
    tracker.begin_dump(tracker.dump_ns + 5 * SECOND)
    tracker.feed(entry(counters=(1, 100, 0, 0)))
    tracker.end_dump()
    refused = tracker.unsent_table()  # offered, refused (backpressure): the deltas stay unsent
    before = refused.to_pylist()
    tracker.begin_dump(tracker.dump_ns + 5 * SECOND)
    tracker.feed(entry(counters=(3, 300, 1, 60)))
    tracker.end_dump()
    assert refused.to_pylist() == before
    [record] = _unsent(tracker)
    assert _counts(record) == (3, 300, 1, 60)


def test_columnar_parsing_agrees_with_the_generic_walk_on_a_mixed_dump() -> None:
    import random
    import socket

    rng = random.Random(12)
    messages, expected = [], []
    for i in range(600):
        v6 = rng.random() < 0.4
        src = f"fd00::{rng.randrange(1, 65535):x}" if v6 else f"10.{rng.randrange(256)}.{rng.randrange(256)}.1"
        dst = f"fd01::{rng.randrange(1, 65535):x}" if v6 else f"172.16.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        options: dict[str, object] = rng.choice([
            {}, {}, {}, {"order": "reply_counters_first"}, {"counter_bits": 32}, {"zone": 3},
            {"extra": nla(22, bytes(16))}, {"start": rng.randrange(1, 1 << 62)},
        ])
        counters = (
            rng.randrange(1, 1000), rng.randrange(1, 1 << 40), rng.randrange(0, 1000), rng.randrange(0, 1 << 33)
        )
        if options.get("counter_bits") == 32:
            counters = tuple(c & 0xFFFFFFFF for c in counters)  # type: ignore[assignment]
        msg = entry(src, rng.randrange(1, 65536), dst, rng.randrange(1, 65536), counters,  # type: ignore[arg-type]
                    proto=rng.choice((6, 17)), ct_id=i + 1, **options)  # type: ignore[arg-type]
        messages.append(msg)
        layout = compile_layout(msg, 0, len(msg))
        osrc, odst, osport, odport, rsrc, rdst, rsport, rdport = layout.tuples(msg, 0)
        family = socket.AF_INET6 if v6 else socket.AF_INET
        expected.append((
            socket.inet_ntop(family, osrc), osport, socket.inet_ntop(family, odst), odport,
            socket.inet_ntop(family, rsrc), rsport, socket.inet_ntop(family, rdst), rdport,
            layout.transport, decode_counters(layout.counters(msg, 0)),
        ))
    rng.shuffle(messages)
    tracker = DeltaTracker("n")
    _cycle(tracker)
    records = _cycle(tracker, *messages)
    got = [
        (r.src, r.sport, r.dst, r.dport, r.reply_src, r.reply_sport, r.reply_dst, r.reply_dport, r.transport,
         _counts(r))
        for r in records
    ]
    assert sorted(got) == sorted(expected)
    assert tracker.layouts.slow_path == tracker.layouts.count  # one generic walk per kind, then columns


def test_the_column_hash_equals_the_hash_of_the_key_words() -> None:
    from kubenetmon.receivers.conntrack._entries import hash_keys, parse_messages
    from kubenetmon.receivers.conntrack._layout import LayoutCache

    buf = b"".join([
        entry("10.0.0.1", 1, "10.0.0.2", 2, ct_id=5, start=123_456_789_012, counters=(1, 1, 1, 1)),
        entry("fd00::1", 3, "fd00::2", 4, ct_id=6, proto=17, counters=(1, 1, 1, 1)),
    ])
    entries, count = parse_messages(buf, 0x100, LayoutCache(), lambda reason, n: None)
    assert count == 2 and len(entries) == 2
    assert np.array_equal(entries.hash(), hash_keys(entries.key()))
    assert np.array_equal(entries.key(np.array([1, 0])), entries.key()[[1, 0]])


def test_a_join_that_fails_midway_makes_the_next_dump_a_baseline_instead_of_counting_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubenetmon.receivers.conntrack._state import EntryState

    tracker = DeltaTracker("n")
    _cycle(tracker, entry(counters=(10, 1000, 10, 1000)))

    def fail(self: EntryState, other: EntryState) -> EntryState:
        raise MemoryError("test")

    with monkeypatch.context() as patch:
        patch.setattr(EntryState, "insert", fail)
        tracker.begin_dump(tracker.dump_ns + 5 * SECOND)
        tracker.feed(entry(counters=(11, 1100, 10, 1000)))
        with pytest.raises(MemoryError):
            tracker.end_dump()
    tracker.take_unsent()  # what the failed cycle had emitted (delivered or not, it was correct)
    assert _cycle(tracker, entry(counters=(12, 1200, 10, 1000))) == []  # a baseline, not 12 packets again
    [record] = _cycle(tracker, entry(counters=(13, 1300, 10, 1000)))
    assert _counts(record) == (1, 100, 0, 0)
