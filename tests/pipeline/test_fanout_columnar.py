"""A fan-out in front of pipelines shares Arrow batches (immutable) instead of copying them per record."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from kubenetmon.flows import FlowBatch, with_columns
from kubenetmon.pipeline.consumers import FanOut
from kubenetmon.telemetry.metrics import ComponentMetrics
from kubenetmon.testing import SinkConsumer
from tests.flowgen import flow, record


def fan_out(n: int) -> tuple[FanOut, list[SinkConsumer]]:
    sinks = [SinkConsumer() for _ in range(n)]
    return FanOut(sinks, ComponentMetrics(CollectorRegistry(), "fanout"), copy=True), sinks


def test_arrow_batches_are_shared_not_copied() -> None:
    fan, sinks = fan_out(3)
    flows = FlowBatch(flows=[flow(i) for i in range(1, 4)]).flow_table()
    records = FlowBatch(records=[record(1)]).record_table()
    fan.consume(FlowBatch(records=records, flows=flows, batch_id="c-1"))
    for sink in sinks:
        (got,) = sink.batches
        assert got.flow_table() is flows and got.record_table() is records  # the same buffers
        assert got.batch_id == "c-1"
    assert len({id(s.batches[0]) for s in sinks}) == 3  # each pipeline still gets its own FlowBatch


def test_a_pipeline_replacing_its_columns_does_not_touch_the_others() -> None:
    fan, sinks = fan_out(2)
    fan.consume(FlowBatch(flows=FlowBatch(flows=[flow(1), flow(2)]).flow_table()))
    mine = sinks[0].batches[0]
    mine.flows = with_columns(mine.flow_table(), {"connection_class": ["INTRA_VPC", "INTRA_VPC"]})
    assert sinks[1].batches[0].flow_table().column("connection_class").to_pylist() == ["", ""]


def test_row_batches_are_still_copied_so_a_row_plugin_cannot_change_another_pipeline() -> None:
    fan, sinks = fan_out(2)
    fan.consume(FlowBatch(flows=[flow(1)]))
    sinks[0].batches[0].flows[0].local.pod = "changed"
    assert sinks[1].batches[0].flows[0].local.pod == "client-1"
