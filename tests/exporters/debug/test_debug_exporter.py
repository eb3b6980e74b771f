"""The debug exporter logs from the Arrow views, at every verbosity, and never fails."""

from __future__ import annotations

import logging

import pytest

from kubenetmon.exporters.debug import DebugConfig, factory
from kubenetmon.flows import FlowBatch
from kubenetmon.testing import check_lifecycle, create_component
from tests.flowgen import flow, record


def columnar() -> FlowBatch:
    return FlowBatch(records=FlowBatch(records=[record(1), record(2, nbytes=7)]).record_table(),
                     flows=FlowBatch(flows=[flow(3, nbytes=50), flow(4, nbytes=5, direction="in")]).flow_table())


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_basic_logs_counts_and_bytes_from_the_columns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    exporter = create_component(factory, DebugConfig())
    batch = columnar()
    exporter.consume(batch)
    # 100+200 + 7+14 from the records, 50+5 from the flows
    assert messages(caplog) == ["batch: 2 conntrack records, 2 flows, 376 bytes"]
    assert exporter.batches == 1


def test_normal_logs_one_line_per_record_and_flow_with_text_addresses(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    create_component(factory, DebugConfig(verbosity="normal")).consume(columnar())
    lines = messages(caplog)
    assert lines[1] == "record tcp 10.0.0.1:40001 -> 10.0.1.1:80 orig 100B/1p reply 200B/2p"
    assert lines[3] == "flow out tcp /client-3 10.0.0.3:40003 -> /server 10.0.1.1:80  50B"
    assert len(lines) == 5


def test_detailed_logs_every_field(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    create_component(factory, DebugConfig(verbosity="detailed")).consume(columnar())
    assert "'local_pod': 'client-4'" in messages(caplog)[4]
    assert "'remote_address': '10.0.1.1'" in messages(caplog)[4]


def test_rows_that_do_not_fit_the_contract_are_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    bad = flow(1)
    bad.local.port = 70000
    create_component(factory, DebugConfig()).consume(FlowBatch(flows=[bad]))
    assert "do not fit the batch contract" in messages(caplog)[0]


def test_lifecycle() -> None:
    check_lifecycle(create_component(factory, DebugConfig()))
