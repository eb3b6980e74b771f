"""Time-aware attribution (issue 13.2): records that arrive late go to the pod that held the address
during their interval, even after that pod was deleted and its IPs given to a new pod."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from kubenetmon.flows import ConntrackRecord, FlowBatch
from kubenetmon.processors.k8s_attributes import ClusterIndex, ObjectParser
from kubenetmon.processors.k8s_attributes.index import pick_tenant
from tests.fixtures.kubeapi import KubeAPIServer, make_node, make_pod, make_replicaset
from tests.processors.k8s_attributes.helpers import ProcessorMaker, eventually, kube_config, record
from tests.processors.k8s_attributes.test_k8s_attributes_static import static_config, write

V4, V6 = "10.1.0.5", "fd00:1::5"
EXTERNAL4, EXTERNAL6 = "198.51.100.4", "2001:db8::4"
MS = 1_000_000


def at(r: ConntrackRecord, start_ns: int, bytes_: int) -> ConntrackRecord:
    """``r`` over ``[start_ns, start_ns + 1 ms)`` with ``bytes_`` original bytes."""
    return dataclasses.replace(r, start_ns=start_ns, end_ns=start_ns + MS, original_bytes=bytes_)


def late_and_new_records(old_start: int, new_start: int) -> list[ConntrackRecord]:
    """Old-interval records for the old pod's v4 and v6 addresses, new-interval ones for the new pod's,
    interleaved as a queue flushed after the outage delivers them."""
    return [
        at(record(V4, EXTERNAL4), new_start, 7),
        at(record(V4, EXTERNAL4), old_start, 1000),
        at(record(V6, EXTERNAL6), old_start, 6000),
        at(record(V6, EXTERNAL6), new_start, 70),
    ]


def bytes_by_pod(flows: list[object]) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    for f in flows:
        if f.direction == "out":  # type: ignore[attr-defined]
            key = (f.local.pod, f.network_type)  # type: ignore[attr-defined]
            totals[key] = totals.get(key, 0) + f.bytes  # type: ignore[attr-defined]
    return totals


EXPECTED = {("old", "ipv4"): 1000, ("old", "ipv6"): 6000, ("new", "ipv4"): 7, ("new", "ipv6"): 70}


def test_deleted_pod_keeps_its_late_bytes_after_its_ips_are_reused_kubernetes(
    kubeapi: KubeAPIServer, tmp_path: Path, make_processor: ProcessorMaker
) -> None:
    kubeapi.add_node("node-a", internal_ips=["10.0.0.1"], zone="za")
    kubeapi.add_replicaset("old-rs", owner=("Deployment", "old-app"))
    kubeapi.add_pod("old", node="node-a", ips=[V4, V6], owner=("ReplicaSet", "old-rs"))
    processor, sink = make_processor(kube_config(kubeapi, tmp_path) | {"owners": True})
    eventually(processor.is_ready, what="sync")
    eventually(lambda: processor.index.pod_by_ip.get(V6) is not None, what="old pod indexed")
    old_start = time.time_ns()
    # creationTimestamp has a resolution of one second: create the new pod in a later second
    # than the old records, as it is in reality (a deletion, then an IP reused).
    time.sleep(1.1)
    kubeapi.delete_pod("old")
    kubeapi.delete_replicaset("old-rs")
    kubeapi.delete_node("node-a")  # the node goes too: its zone must stay for the old records
    eventually(lambda: V4 not in processor.index.pod_by_ip, what="old pod deleted")
    kubeapi.add_node("node-a2", internal_ips=["10.0.0.2"], zone="zb")
    kubeapi.add_pod("new", node="node-a2", ips=[V4, V6])
    eventually(lambda: (a := processor.index.pod_by_ip.get(V6)) is not None and a.pod == "new",
               what="new pod indexed")
    new_start = time.time_ns()

    records = late_and_new_records(old_start, new_start)
    records = [dataclasses.replace(r, node="node-a" if r.start_ns == old_start else "node-a2") for r in records]
    processor.consume(FlowBatch(records))

    assert bytes_by_pod(sink.flows) == EXPECTED
    old_flow = next(f for f in sink.flows if f.local.pod == "old")
    assert (old_flow.local.node, old_flow.local.availability_zone) == ("node-a", "za")
    assert (old_flow.local.owner_kind, old_flow.local.owner_name) == ("Deployment", "old-app")
    new_flow = next(f for f in sink.flows if f.local.pod == "new")
    assert (new_flow.local.node, new_flow.local.availability_zone) == ("node-a2", "zb")


def test_deleted_pod_keeps_its_late_bytes_after_its_ips_are_reused_static(
    tmp_path: Path, make_processor: ProcessorMaker
) -> None:
    path = tmp_path / "inventory.yaml"
    node = "nodes:\n  - {name: node-a, addresses: [10.0.0.1], zone: za}\n"
    write(path, node + f'pods:\n  - {{name: old, node: node-a, ips: [{V4}, "{V6}"]}}\n')
    processor, sink = make_processor(static_config(path))
    old_start = time.time_ns()
    time.sleep(0.01)
    reloads = processor.source._reloads  # type: ignore[union-attr]
    # The old pod disappears from the file and the new one, with no creation time, is first seen at
    # the reload: the old pod ends at that reload.
    write(path, node + f'pods:\n  - {{name: new, node: node-a, ips: [{V4}, "{V6}"]}}\n')
    eventually(lambda: reloads.value(result="ok") >= 2, what="reload")
    time.sleep(0.01)
    new_start = time.time_ns()

    processor.consume(FlowBatch(late_and_new_records(old_start, new_start)))

    assert bytes_by_pod(sink.flows) == EXPECTED


def test_records_without_times_or_older_than_the_history_go_to_the_current_pod() -> None:
    """Records with no overlapping tenancy keep today's behaviour: the pod holding the IP now."""
    clock = [10_000 * MS]
    parser = ObjectParser(clock=lambda: clock[0])
    index = ClusterIndex(clock=lambda: clock[0])
    index.replace_pods([parser.pod(make_pod("old", node="n", ip=V4, created="1970-01-01T00:00:05Z"))])
    clock[0] = 20_000 * MS
    index.replace_pods([parser.pod(make_pod("new", node="n", ip=V4, created="1970-01-01T00:00:20Z"))])
    assert index.tenant(V4, 6_000 * MS, 7_000 * MS).pod == "old"  # type: ignore[union-attr]
    assert index.tenant(V4, 21_000 * MS, 22_000 * MS).pod == "new"  # type: ignore[union-attr]
    assert index.tenant(V4, 0, 0).pod == "new"  # type: ignore[union-attr]
    assert index.tenant(V4, 1_000, 2_000).pod == "new"  # type: ignore[union-attr]
    # An interval straddling the switch goes to the pod that held the IP for most of it.
    assert index.tenant(V4, 19_000 * MS, 20_500 * MS).pod == "old"  # type: ignore[union-attr]
    assert index.tenant(V4, 19_800 * MS, 22_000 * MS).pod == "new"  # type: ignore[union-attr]


def test_history_expires_after_the_retention_and_is_bounded_in_count() -> None:
    clock = [1_000 * MS]
    parser = ObjectParser(clock=lambda: clock[0])
    index = ClusterIndex(retention_ns=60_000 * MS, max_retired=3, clock=lambda: clock[0])
    index.replace_nodes([parser.node(make_node("n", internal_ips=["10.0.0.1"], zone="z1"))])
    pods = [parser.pod(make_pod(f"p{i}", node="n", ip=f"10.1.0.{i}", created="1970-01-01T00:00:00Z"))
            for i in range(5)]
    index.replace_pods(pods)
    clock[0] = 2_000 * MS
    index.replace_pods([])  # all five deleted at once: the first two retired are evicted, counted
    assert index.retired_count == 3 and index.evicted == 2
    assert index.tenant("10.1.0.4", 1_500 * MS, 1_600 * MS).pod == "p4"  # type: ignore[union-attr]
    assert index.tenant("10.1.0.0", 1_500 * MS, 1_600 * MS) is None
    index.replace_nodes([])
    assert index.zone_of == {"n": "z1"}  # the deleted node's zone stays for its pods' late records
    clock[0] = 62_001 * MS
    index.expire()
    assert index.retired_count == 0 and index.retired_by_ip == {} and index.zone_of == {}
    assert index.evicted == 2  # expiry by age is not an eviction


def test_replicaset_owner_is_kept_after_deletion_for_the_retention() -> None:
    clock = [1_000 * MS]
    index = ClusterIndex(retention_ns=60_000 * MS, clock=lambda: clock[0])
    index.upsert_replicaset(*ObjectParser.replicaset(make_replicaset("rs", owner=("Deployment", "web"))))
    index.remove_replicaset("default/rs")
    assert index.rs_owner == {"default/rs": ("Deployment", "web")}
    clock[0] = 61_001 * MS
    index.expire()
    assert index.rs_owner == {}


def test_pod_recreated_under_the_same_name_ends_the_old_tenancy() -> None:
    """A StatefulSet pod deleted and re-created while the watch was away shows up in a re-list
    with a new creationTimestamp: the old incarnation's records still go to its attributes."""
    clock = [10_000 * MS]
    parser = ObjectParser(clock=lambda: clock[0])
    index = ClusterIndex(clock=lambda: clock[0])
    index.replace_pods([parser.pod(make_pod("web-0", node="n1", ip=V4, created="1970-01-01T00:00:05Z"))])
    clock[0] = 20_000 * MS
    index.replace_pods([parser.pod(make_pod("web-0", node="n2", ip=V4, created="1970-01-01T00:00:15Z"))])
    assert index.tenant(V4, 6_000 * MS, 7_000 * MS).node == "n1"  # type: ignore[union-attr]
    assert index.tenant(V4, 21_000 * MS, 22_000 * MS).node == "n2"  # type: ignore[union-attr]


def test_pick_tenant_prefers_the_newest_on_equal_overlap() -> None:
    parser = ObjectParser()
    a = parser.pod(make_pod("a", ip=V4, created="1970-01-01T00:00:01Z")).attrs
    b = parser.pod(make_pod("b", ip=V4, created="1970-01-01T00:00:02Z")).attrs
    retired = [(1_000 * MS, 9_000 * MS, a), (2_000 * MS, 9_000 * MS, b)]
    assert pick_tenant(None, retired, 3_000 * MS, 4_000 * MS) is b
