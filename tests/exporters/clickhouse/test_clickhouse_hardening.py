"""Bad input never costs valid data (issue 16, exporter side): only the bad rows are dropped, counted and logged.

Every insert really runs in chDB. Where ClickHouse itself must refuse some rows,
the refusal is injected in front of the real client for the parts that hold a
marked row (as a server would refuse them), so that the bisection and its
dedup tokens are exercised against the real engine.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from kubenetmon.exporters.clickhouse.connection import Connection
from kubenetmon.flows import Endpoint, FlowBatch
from tests.exporters.clickhouse.clickhouse_testkit import IDENTITY, SECOND, T0_NS, make_flow, wait_until
from tests.exporters.clickhouse.faults import FaultyExporter

MAX_U64 = 2**64 - 1


def total(db: Connection) -> tuple[int, int]:
    rows = db.client.query("SELECT sum(bytes), count() FROM default.network_flows_0").result_rows
    return int(rows[0][0]), int(rows[0][1])


def spread(n: int, **kw: Any) -> list[Any]:
    """``n`` flows that aggregate into ``n`` distinct rows (one per remote port)."""
    return [make_flow("out", nbytes=1, remote=Endpoint(address="10.0.1.2", port=1000 + i, pod=f"p{i}"), **kw)
            for i in range(n)]


def test_an_int_in_a_string_field_drops_that_flow_only_without_retrying(
    db: Connection, make_exporter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # An unquoted number in an inventory reached a String column: AttributeError, classified
    # retryable, the block retried for an hour and then dropped whole.
    bad = make_flow("in", nbytes=1000, local=Endpoint(address="10.0.0.1", port=80, pod=12345))  # type: ignore[arg-type]
    exporter = make_exporter()
    exporter.consume(FlowBatch(flows=[*spread(5), bad]))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    assert total(db) == (5, 5)
    assert exporter.m_rejected.value(reason="invalid_value") == 1
    assert exporter.m_retries.value() == 0


def test_a_far_future_time_is_rejected_alone(db: Connection, make_exporter: Any) -> None:
    # Year 2262 (the largest int64 ns): no DateTime holds its bucket; ClickHouse would refuse the insert.
    far = make_flow("out", nbytes=1000, end_ns=2**63 - 1)
    exporter = make_exporter()
    exporter.consume(FlowBatch(flows=[*spread(3), far]))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    assert total(db) == (3, 3)
    assert exporter.m_rejected.value(reason="time_out_of_range") == 1
    assert exporter.m_dropped.labels(reason="permanent_error")._value.get() == 0


class RefusesPoison(FaultyExporter):
    """ClickHouse refusing, for its data, every insert whose rows include the pod ``poison``."""

    error: type[Exception] | None = None

    def insert(self, conn: Connection, prepared: Any, token: str, lo: int = 0, hi: int | None = None) -> None:
        pods = prepared.part(lo, prepared.rows if hi is None else hi).column("localPod").to_pylist()
        if "poison" in pods:
            assert self.faulty is not None
            self.faulty.calls.append(("refused", token))
            if self.error is not None:
                raise self.error("poisoned")
            raise DatabaseError("Code: 117. DB::Exception: Cannot parse value (INCORRECT_DATA)", code=117)
        super().insert(conn, prepared, token, lo, hi)


@pytest.mark.parametrize("error", [None, AttributeError])
def test_a_block_refused_for_its_data_is_bisected_and_only_the_bad_row_dropped(
    db: Connection, make_exporter: Any, caplog: pytest.LogCaptureFixture, error: type[Exception] | None
) -> None:
    RefusesPoison.error = error
    flows = spread(40)
    flows[29] = make_flow("out", nbytes=7, local=Endpoint(address="10.0.0.1", port=8080, pod="poison"))
    exporter = make_exporter(cls=RefusesPoison)
    caplog.set_level(logging.ERROR)
    exporter.consume(FlowBatch(flows=flows, batch_id="batch-1"))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    assert total(db) == (39, 39)
    assert exporter.m_rejected.value(reason="insert_rejected") == 1
    assert exporter.m_retries.value() == 0
    assert exporter.m_dropped.labels(reason="permanent_error")._value.get() == 0
    assert any("poison" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)
    assert exporter.faulty is not None
    tokens = [t for _, t in exporter.faulty.calls]
    assert tokens[0] == "batch-1"  # the whole block first, under the producer's batch id
    assert all(t.startswith("batch-1:") for t in tokens[1:])
    # ~2·log2(40) attempts, not one per row
    assert len(tokens) <= 2 * 6 + 1


def test_a_retried_split_block_is_counted_once(db: Connection, make_exporter: Any) -> None:
    # A lost acknowledgement in the middle of a bisection: the block is retried, split again
    # into the same parts with the same tokens, and the engine deduplicates what it already has.
    class LosesOneAck(RefusesPoison):
        plan = staticmethod(lambda n: "after" if n == 3 else "ok")  # the first part let through

    RefusesPoison.error = None
    flows = spread(16)
    flows[3] = make_flow("out", nbytes=7, local=Endpoint(address="10.0.0.1", port=8080, pod="poison"))
    exporter = make_exporter(cls=LosesOneAck)
    exporter.consume(FlowBatch(flows=flows))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    assert exporter.m_retries.value() == 1
    assert total(db) == (15, 15)
    assert exporter.m_rejected.value(reason="insert_rejected") == 1
    assert exporter.faulty is not None
    tokens = [t for _, t in exporter.faulty.calls]
    assert tokens.count(tokens[0]) == 1  # the retry resumed the split instead of re-trying the whole block
    assert tokens.count(tokens[3]) == 2  # the part whose acknowledgement was lost: re-sent under its token


def test_sums_past_2_64_are_split_into_rows_never_wrapped(db: Connection, make_exporter: Any) -> None:
    from kubenetmon.exporters.clickhouse.rows import RowMapper

    same_key = [make_flow("out", nbytes=MAX_U64 - 10), make_flow("out", nbytes=100), make_flow("out", nbytes=1)]
    other = make_flow("in", nbytes=5, packets=MAX_U64)
    prepared = RowMapper(IDENTITY).prepare([*same_key, other, make_flow("in", nbytes=6, packets=2)])
    got = sorted((r["direction"], r["bytes"], r["packets"]) for r in prepared.to_rows())
    assert got == sorted([("out", MAX_U64 - 10, 1), ("out", 100, 1), ("out", 1, 1), ("in", 5, MAX_U64),
                          ("in", 6, 2)])
    assert prepared.overflow_splits == 2
    # Below the limit, sums stay exact in uint64 (no float on the way).
    exact = RowMapper(IDENTITY).prepare([make_flow("out", nbytes=MAX_U64 - 1), make_flow("out", nbytes=1)])
    assert [r["bytes"] for r in exact.to_rows()] == [MAX_U64]

    exporter = make_exporter()
    exporter.consume(FlowBatch(flows=[*same_key, make_flow("in", nbytes=9, end_ns=T0_NS + 90 * SECOND)]))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    assert exporter.m_overflow.value() == 1
    assert db.client.query("SELECT count() FROM default.network_flows_0 WHERE direction = 'in'").result_rows == [(1,)]
