"""The static source: a YAML inventory of nodes and pods, reloaded when the file changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from kubenetmon.flows import FlowBatch
from kubenetmon.processors.k8s_attributes import InventoryError, K8sAttributesConfig, ObjectParser, load_inventory
from kubenetmon.testing import check_lifecycle
from tests.processors.k8s_attributes.helpers import ProcessorMaker, eventually, record

INVENTORY = """\
nodes:
  - name: laptop
    addresses: [192.168.1.10, "fd00::10"]
    zone: home-1
pods:
  - name: web
    namespace: shop
    node: laptop
    ips: [172.17.0.2]
    labels: {app.kubernetes.io/name: web, control-plane-id: cp-9}
    owner: {kind: Deployment, name: web}
  - name: db
    node: laptop
    ip: 172.17.0.3
    labels: {k8s-app: postgres}
    created: "2024-01-01T00:00:00Z"
"""


def write(path: Path, text: str) -> None:
    path.write_text(text)
    # Make sure the poller sees a new mtime even on coarse-grained filesystems.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def static_config(path: Path, **extra: object) -> dict[str, object]:
    return {"source": "static", "static": {"path": str(path), "poll_interval": 0.05}, **extra}


def test_inventory_short_form_attributes_flows(tmp_path: Path, make_processor: ProcessorMaker) -> None:
    path = tmp_path / "inventory.yaml"
    write(path, INVENTORY)
    processor, sink = make_processor(static_config(path, owners=True), cluster="laptop-cluster")
    assert processor.is_ready()
    processor.consume(FlowBatch([record("172.17.0.2", "172.17.0.3", node="laptop", dport=5432)]))
    out = sink.flows[0]
    assert (out.local.pod, out.local.namespace, out.local.app, out.local.instance_id) == ("web", "shop", "web", "cp-9")
    assert (out.local.node, out.local.availability_zone, out.local.cluster) == ("laptop", "home-1", "laptop-cluster")
    assert (out.local.owner_kind, out.local.owner_name) == ("Deployment", "web")
    remote = (out.remote.pod, out.remote.namespace, out.remote.app, out.remote.port)
    assert remote == ("db", "default", "postgres", 5432)
    assert (out.bytes, sink.flows[1].bytes) == (1000, 5000)


def test_host_traffic_on_a_single_machine_is_attributed_to_the_node_when_kept(
    tmp_path: Path, make_processor: ProcessorMaker
) -> None:
    path = tmp_path / "inventory.yaml"
    write(path, INVENTORY)
    processor, sink = make_processor(static_config(path, node_flows="keep"))
    processor.consume(FlowBatch([record("fd00::10", "2001:db8::1", node="laptop", dport=443)]))
    out = sink.flows[0]
    assert (out.local.address, out.local.node, out.local.availability_zone, out.local.pod) == (
        "fd00::10", "laptop", "home-1", "")
    assert out.remote.address == "2001:db8::1" and out.network_type == "ipv6"


def test_kubernetes_objects_are_accepted_as_entries(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("""\
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Node
    metadata: {name: n1, labels: {topology.kubernetes.io/zone: z1}}
    status: {addresses: [{type: InternalIP, address: 10.0.0.1}, {type: Hostname, address: n1}]}
  - apiVersion: v1
    kind: Pod
    metadata: {name: p1, namespace: ns1, labels: {app.kubernetes.io/name: a1}}
    spec: {nodeName: n1}
    status: {phase: Running, podIP: 10.1.0.1}
""")
    pods, nodes, _ = load_inventory(path, ObjectParser())
    assert [(n.name, n.zone, n.addresses) for n in nodes] == [("n1", "z1", ("10.0.0.1",))]
    assert [(p.key, p.ips, p.attrs.app, p.attrs.node) for p in pods] == [("ns1/p1", ("10.1.0.1",), "a1", "n1")]


def test_changed_file_is_reloaded(tmp_path: Path, make_processor: ProcessorMaker) -> None:
    path = tmp_path / "inventory.yaml"
    write(path, INVENTORY)
    processor, _ = make_processor(static_config(path))
    assert processor.index.pod_by_ip["172.17.0.2"].pod == "web"
    write(path, INVENTORY.replace("name: web\n", "name: web-v2\n").replace("home-1", "home-2"))
    eventually(lambda: processor.index.pod_by_ip["172.17.0.2"].pod == "web-v2", what="reload")
    assert processor.index.zone_of["laptop"] == "home-2"


def test_broken_reload_keeps_the_previous_inventory(tmp_path: Path, make_processor: ProcessorMaker,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "inventory.yaml"
    write(path, INVENTORY)
    processor, _ = make_processor(static_config(path))
    reloads = processor.source._reloads  # type: ignore[union-attr]
    write(path, "pods: [unclosed\n")
    eventually(lambda: reloads.value(result="failed") >= 1, what="failed reload")
    assert processor.index.pod_by_ip["172.17.0.2"].pod == "web"
    assert processor.health() is None
    assert "keeping the previous inventory" in caplog.text
    write(path, INVENTORY.replace("name: db", "name: db2"))
    eventually(lambda: "db2" in {a.pod for a in processor.index.pod_by_ip.values()}, what="recovery")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pods:\n  - {namespace: x}\n", "pods[0]: 'name' is required"),
        ("pods:\n  - {name: a, ipz: [1.2.3.4]}\n", "pods[0]: unknown key(s) ipz"),
        ("nodes:\n  - {name: n, zone: z}\n  - oops\n", "nodes[1]: expected a mapping"),
        ("services: []\n", "unknown top-level key(s) services"),
        ("pods:\n  - {name: a, owner: Deployment}\n", "owner must be a mapping with 'kind' and 'name'"),
        ("items:\n  - {kind: Service, metadata: {name: s}}\n", "only Pod, Node and ReplicaSet"),
        ("pods: {name: a}\n", "pods must be a list"),
    ],
)
def test_malformed_inventory_names_the_entry_at_fault(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InventoryError) as err:
        load_inventory(path, ObjectParser())
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_inventory_fails_start_with_the_path(tmp_path: Path, make_processor: ProcessorMaker) -> None:
    processor, _ = make_processor(static_config(tmp_path / "absent.yaml"), start=False)
    with pytest.raises(InventoryError, match=r"absent\.yaml"):
        processor.start(None)  # type: ignore[arg-type]


def test_static_source_requires_a_path() -> None:
    with pytest.raises(ValidationError, match="static::path is required"):
        K8sAttributesConfig.model_validate({"source": "static"})


def test_unknown_config_keys_are_rejected() -> None:
    with pytest.raises(ValidationError):
        K8sAttributesConfig.model_validate({"node_flow": "keep"})
    with pytest.raises(ValidationError):
        K8sAttributesConfig.model_validate({"node_flows": "sometimes"})


def test_lifecycle_contract_with_static_source(tmp_path: Path, make_processor: ProcessorMaker) -> None:
    path = tmp_path / "inventory.yaml"
    write(path, INVENTORY)
    processor, _ = make_processor(static_config(path), start=False)
    check_lifecycle(processor)
    assert processor.health() is None


def test_batches_without_records_pass_through_untouched(tmp_path: Path, make_processor: ProcessorMaker) -> None:
    path = tmp_path / "inventory.yaml"
    write(path, INVENTORY)
    processor, sink = make_processor(static_config(path))
    batch = FlowBatch()
    processor.consume(batch)
    assert sink.batches == [batch]


def test_input_batch_is_not_mutated_so_a_retry_after_downstream_backpressure_is_safe(
    tmp_path: Path, make_processor: ProcessorMaker
) -> None:
    from kubenetmon.errors import BackpressureError

    path = tmp_path / "inventory.yaml"
    write(path, INVENTORY)
    processor, sink = make_processor(static_config(path))
    batch = FlowBatch([record("172.17.0.2", "172.17.0.3", node="laptop")])
    sink.refuse = True
    with pytest.raises(BackpressureError):
        processor.consume(batch)
    assert len(batch.records) == 1 and batch.flows == []
    sink.refuse = False
    processor.consume(batch)
    assert len(sink.flows) == 2 and sink.batches[0].records == []


def test_drops_are_counted_by_reason_and_logged_at_most_once_per_interval(
    tmp_path: Path, make_processor: ProcessorMaker, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "inventory.yaml"
    write(path, INVENTORY)
    processor, sink = make_processor(static_config(path, unknown_direction="drop", drop_log_interval=3600))
    node_flow = record("192.168.1.10", "172.17.0.2", node="laptop")
    unknown = record("203.0.113.1", "198.51.100.1", node="laptop")
    with caplog.at_level("INFO"):
        processor.consume(FlowBatch([node_flow, unknown, node_flow]))
        processor.consume(FlowBatch([node_flow]))
    assert sink.flows == []
    assert processor._m_dropped.value(reason="node_flow") == 3
    assert processor._m_dropped.value(reason="unknown_direction") == 1
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 2  # one per reason, the second node-flow batch is suppressed
    assert any("dropped 2 conntrack record(s) (node_flow" in line and "192.168.1.10:40000" in line for line in lines)
    assert any("(unknown_direction" in line for line in lines)


@pytest.mark.parametrize("engine", ["columnar", "rows"])
def test_the_producers_batch_id_survives_attribution(tmp_path: Path, make_processor: ProcessorMaker,
                                                     engine: str) -> None:
    """A batch re-delivered after a crash (conntrack checkpoint, agent re-send) keeps its name through
    k8s_attributes, so the exporter's queue and ClickHouse can insert it once."""
    path = tmp_path / "inventory.yaml"
    write(path, INVENTORY)
    processor, sink = make_processor(static_config(path, engine=engine))
    processor.consume(FlowBatch([record("172.17.0.2", "172.17.0.3", node="laptop")], batch_id="node-a:42"))
    assert sink.batches[-1].batch_id == "node-a:42"


def test_the_columnar_engine_makes_no_row_objects(tmp_path: Path, make_processor: ProcessorMaker) -> None:
    path = tmp_path / "inventory.yaml"
    write(path, INVENTORY)
    processor, sink = make_processor(static_config(path))
    batch = FlowBatch(FlowBatch([record("172.17.0.2", "172.17.0.3", node="laptop")]).record_table())
    processor.consume(batch)
    out = sink.batches[-1]
    assert batch._records.peek_table() is not None  # read as columns, not turned into rows
    assert out._flows.peek_table() is not None and out.num_flows == 2
    assert out.flow_table().column("remote_pod").to_pylist() == ["db", "db"]


def test_the_next_consumer_runs_outside_the_compute_slot(tmp_path: Path) -> None:
    """The slot is held around the attribution only: a next consumer that waits (a full queue) must not
    keep the other stages (decoding, the exporter's mapping) from taking it."""
    import threading

    from kubenetmon.component import Kind
    from kubenetmon.compute import compute_slot
    from kubenetmon.identity import Identity
    from kubenetmon.processors.k8s_attributes import factory
    from kubenetmon.testing import StaticHost, create_settings

    taken_elsewhere: list[bool] = []

    class Downstream:
        def consume(self, batch: FlowBatch) -> None:
            def other_stage() -> None:
                got = compute_slot().acquire(timeout=5)
                taken_elsewhere.append(got)
                if got:
                    compute_slot().release()

            thread = threading.Thread(target=other_stage)
            thread.start()
            thread.join(10)

    path = tmp_path / "inventory.yaml"
    write(path, INVENTORY)
    settings = create_settings(Kind.PROCESSOR, "k8s_attributes", identity=Identity(cluster="c"))
    processor = factory.create(settings, K8sAttributesConfig.model_validate(static_config(path)), Downstream())
    processor.start(StaticHost())
    try:
        processor.consume(FlowBatch([record("172.17.0.2", "172.17.0.3", node="laptop", dport=5432)]))
    finally:
        processor.shutdown(5)
    assert taken_elsewhere == [True]
