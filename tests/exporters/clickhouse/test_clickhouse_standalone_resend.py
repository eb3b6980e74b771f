"""One idempotency key end to end on ``config/standalone.yaml``'s path (issue 11).

The conntrack receiver checkpoints each batch before handing it on and, after a
crash, re-sends the batches it cannot prove were delivered, under the same
``batch_id``. The first copy may already be in ClickHouse (or in the exporter's
persistent queue). Driven here through the shipped config's real processors
(static inventory, real cloud-range files) and the real exporter into chDB; the
receiver's re-send is played by handing the same batch on twice, as its
checkpoint replay does, and once more after the exporter restarted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubenetmon.component import ComponentID, Kind
from kubenetmon.config.loader import expand_env, load_files
from kubenetmon.config.validate import validate
from kubenetmon.exporters.clickhouse import ClickHouseConfig
from kubenetmon.exporters.clickhouse.connection import Connection, connect
from kubenetmon.flows import ConntrackRecord, FlowBatch
from kubenetmon.plugins import build_plugin_manager, load_components
from kubenetmon.testing import StaticHost, create_component, create_settings
from tests.exporters.clickhouse.clickhouse_testkit import SECOND, T0_NS, make_flow, wait_until

REPO = Path(__file__).resolve().parents[3]
RANGES = Path("/work/shared/data/cloud-ranges")
INVENTORY = """\
nodes:
  - name: laptop
    addresses: [192.168.1.10]
    zone: home-1
pods:
  - {name: web, namespace: shop, node: laptop, ip: 172.17.0.2, labels: {app.kubernetes.io/name: web}}
  - {name: db, namespace: shop, node: laptop, ip: 172.17.0.3, labels: {app.kubernetes.io/name: db}}
"""


def _record(sport: int, nbytes: int) -> ConntrackRecord:
    return ConntrackRecord(
        node="laptop", transport="tcp", network_type="ipv4",
        src="172.17.0.2", sport=sport, dst="172.17.0.3", dport=5432,
        reply_src="172.17.0.3", reply_sport=5432, reply_dst="172.17.0.2", reply_dport=sport,
        original_bytes=nbytes, original_packets=1, reply_bytes=2 * nbytes, reply_packets=1,
        start_ns=T0_NS, end_ns=T0_NS + 5 * SECOND,
    )


class Standalone:
    """k8s_attributes → cloud_prefix → clickhouse, built from config/standalone.yaml."""

    def __init__(self, tmp_path: Path) -> None:
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(INVENTORY)
        env = {
            "KUBENETMON_INVENTORY": str(inventory),
            "KUBENETMON_STATE_DIR": str(tmp_path / "state"),
            "CLICKHOUSE_ENDPOINT": f"chdb://{tmp_path / 'chdb'}",
            "CLOUD_RANGES_DIR": str(RANGES),
            "CLOUD_RANGES_OFFLINE": "true",
        }
        raw = expand_env(load_files([REPO / "config" / "standalone.yaml"]), env)
        registry = load_components(build_plugin_manager(load_entry_points=False))
        self.config = validate(raw, registry)
        identity = self.config.service.identity

        def make(kind: Kind, name: str, consumer: Any = None) -> Any:
            entry = registry.get(kind, name)
            assert entry is not None
            settings = create_settings(kind, name, identity=identity)
            return create_component(entry.factory, self.config.component(kind, ComponentID.parse(name)),
                                    consumer=consumer, settings=settings)

        self.exporter = make(Kind.EXPORTER, "clickhouse")
        self.cloud = make(Kind.PROCESSOR, "cloud_prefix", self.exporter)
        self.k8s = make(Kind.PROCESSOR, "k8s_attributes", self.cloud)
        self.components = [self.exporter, self.cloud, self.k8s]

    def start(self) -> None:
        for c in self.components:
            c.start(StaticHost())

    def shutdown(self) -> None:
        for c in reversed(self.components):
            c.shutdown(30)


@pytest.mark.skipif(not RANGES.is_dir(), reason=f"the real cloud-range files are expected in {RANGES}")
def test_a_batch_resent_by_the_conntrack_receiver_after_a_crash_is_inserted_once(tmp_path: Path) -> None:
    cycle = [_record(40001, 1000), _record(40002, 30)]
    first = Standalone(tmp_path)
    first.start()
    try:
        first.k8s.consume(FlowBatch(records=cycle, batch_id="laptop-cycle-17"))
        # The receiver crashed before it recorded the delivery: its checkpoint replays the batch.
        first.k8s.consume(FlowBatch(records=cycle, batch_id="laptop-cycle-17"))
    finally:
        first.shutdown()
    again = Standalone(tmp_path)  # and once more after the whole process restarted
    again.start()
    try:
        again.k8s.consume(FlowBatch(records=cycle, batch_id="laptop-cycle-17"))
    finally:
        again.shutdown()
    conn = connect(ClickHouseConfig(endpoint=f"chdb://{tmp_path / 'chdb'}"))
    try:
        rows = conn.client.query(
            "SELECT direction, localPod, remotePod, sum(bytes) FROM default.network_flows_0 "
            "GROUP BY direction, localPod, remotePod ORDER BY direction, localPod"
        ).result_rows
    finally:
        conn.close()
    # web (the original source) sent 1030 bytes and received 2060: counted once, not three times.
    assert rows == [("out", "web", "db", 1030), ("in", "web", "db", 2060)]


def test_the_exporter_inserts_a_resent_named_batch_once(db: Connection, make_exporter: Any, tmp_path: Path) -> None:
    def named() -> FlowBatch:
        return FlowBatch(flows=[make_flow("out", nbytes=1000)], batch_id="laptop-cycle-17")

    # A copy arriving while the first is queued or after it was delivered is not queued again.
    exporter = make_exporter()
    exporter.consume(named())
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    exporter.consume(named())
    assert exporter.m_duplicates.value() == 1
    exporter.shutdown(10)
    # A memory queue forgets across a restart; the insert token (the batch id) still counts it once.
    exporter = make_exporter()
    exporter.consume(named())
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    exporter.shutdown(10)
    # A persistent queue remembers delivered ids across a restart.
    queue = {"storage": "persistent", "directory": str(tmp_path / "queue")}
    make_exporter(sending_queue=queue).shutdown(10)
    first = make_exporter(sending_queue=queue)
    first.consume(FlowBatch(flows=[make_flow("in", nbytes=5)], batch_id="laptop-cycle-18"))
    assert wait_until(lambda: first.m_blocks.value() == 1)
    first.shutdown(10)
    second = make_exporter(sending_queue=queue)
    second.consume(FlowBatch(flows=[make_flow("in", nbytes=5)], batch_id="laptop-cycle-18"))
    assert second.m_duplicates.value() == 1
    second.shutdown(10)
    rows = db.client.query("SELECT direction, sum(bytes) FROM default.network_flows_0 GROUP BY direction "
                           "ORDER BY direction").result_rows
    assert rows == [("out", 1000), ("in", 5)]
