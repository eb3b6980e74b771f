"""The columnar engine against the row path: same flows, same counts, on random inventories (pods sharing
IPs, finished pods, history of deleted pods, a peer cluster, IPv4 and IPv6) and random records (DNAT,
node flows, unknown remotes, late intervals) — and what it costs in compiles."""

from __future__ import annotations

import os
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kubenetmon.flows import ConntrackRecord, Flow, FlowBatch
from kubenetmon.processors.k8s_attributes import Attributor, ClusterIndex, ObjectParser
from kubenetmon.processors.k8s_attributes.vector import VectorAttributor
from tests.fixtures.kubeapi import make_node, make_pod, make_replicaset

EXAMPLES = int(os.environ.get("KUBENETMON_FUZZ_EXAMPLES", "150"))
S = 1_000_000_000
NODES = ["node-a", "node-b", "node-c"]
V4 = [f"10.1.0.{i}" for i in range(1, 9)]
V6 = [f"fd00::{i:x}" for i in range(1, 9)]
NODE_IPS = {"node-a": ["10.0.0.1", "fd00:ffff::1"], "node-b": ["10.0.0.2"], "node-c": ["10.0.0.3"]}
EXTERNAL = ["198.51.100.4", "2001:db8::4"]


@st.composite
def pod_specs(draw: st.DrawFn, peer: bool = False) -> dict[str, Any]:
    family = draw(st.sampled_from([V4, V6]))
    return {
        "name": draw(st.sampled_from(["web", "db", "api", "job"])) + str(draw(st.integers(0, 3))),
        "node": draw(st.sampled_from([*NODES, ""] if not peer else ["peer-1", "peer-2"])),
        "ips": draw(st.lists(st.sampled_from(family), min_size=0, max_size=2, unique=True)),
        "phase": draw(st.sampled_from(["Running", "Running", "Pending", "Succeeded"])),
        "created": draw(st.integers(1, 50)),
        "owner": draw(st.sampled_from([None, ("ReplicaSet", "rs-1"), ("StatefulSet", "db")])),
        "app": draw(st.sampled_from(["", "web", "db"])),
    }


def pod_object(spec: dict[str, Any]) -> dict[str, Any]:
    created = f"1970-01-01T00:00:{spec['created']:02d}Z"
    return make_pod(spec["name"], node=spec["node"], ips=spec["ips"], phase=spec["phase"], owner=spec["owner"],
                    created=created, labels={"app.kubernetes.io/name": spec["app"]} if spec["app"] else None)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[ClusterIndex], list[ConntrackRecord], dict[str, Any]]:
    clock = [10 * S]
    parser = ObjectParser(clock=lambda: clock[0])
    own = ClusterIndex(clock=lambda: clock[0])
    own.replace_nodes([parser.node(make_node(n, internal_ips=ips, zone=f"z-{n}")) for n, ips in NODE_IPS.items()])
    own.upsert_replicaset(*ObjectParser.replicaset(make_replicaset("rs-1", owner=("Deployment", "web"))))
    # Generations of pods: each replaces the last at a later time, leaving history for late records.
    for generation in range(draw(st.integers(1, 3))):
        clock[0] = (60 + 60 * generation) * S
        pods = draw(st.lists(pod_specs(), max_size=6))
        if draw(st.booleans()):
            own.replace_pods([parser.pod(pod_object(p)) for p in pods])
        else:
            for p in pods:
                own.upsert_pod(parser.pod(pod_object(p)))
            for p in draw(st.lists(st.sampled_from(pods), max_size=2)) if pods else []:
                own.remove_pod(f"default/{p['name']}")
    indexes = [own]
    options: dict[str, Any] = {
        "keep_node_flows": draw(st.booleans()), "keep_unknown_direction": draw(st.booleans()),
        "owners": draw(st.booleans()),
    }
    if draw(st.booleans()):
        peer_parser = ObjectParser(cluster="west")
        peer = ClusterIndex()
        peer.replace_nodes([peer_parser.node(make_node("peer-1", internal_ips=["10.9.0.1"], zone="w1")),
                            peer_parser.node(make_node("node-a", internal_ips=["10.9.0.2"], zone="w2"))])
        peer.replace_pods([peer_parser.pod(pod_object(p)) for p in draw(st.lists(pod_specs(peer=True), max_size=4))])
        indexes.append(peer)
    addresses = st.sampled_from([*V4, *V6, *EXTERNAL, "10.0.0.1", "10.0.0.2", "10.9.0.1", "fd00:ffff::1"])
    records = []
    for _ in range(draw(st.integers(1, 12))):
        # One family per entry, as conntrack has them and the otlp receiver requires (it refuses an
        # IPv4 address on an ipv6 record as bad_address).
        src = draw(addresses)
        same_family = addresses.filter(lambda a, v6=":" in src: (":" in a) == v6)
        dst = draw(same_family)
        reply_src = draw(st.sampled_from([dst, draw(same_family)]))  # DNAT: another reply source
        start = draw(st.sampled_from([0, 5 * S, 70 * S, 110 * S, 130 * S, 170 * S, 500 * S]))
        records.append(ConntrackRecord(
            node=draw(st.sampled_from([*NODES, "peer-1", "elsewhere"])),
            transport=draw(st.sampled_from(["tcp", "udp"])),
            network_type="ipv6" if ":" in src else "ipv4", src=src, sport=draw(st.integers(0, 65535)), dst=dst,
            dport=draw(st.integers(0, 65535)), reply_src=reply_src, reply_sport=draw(st.integers(0, 65535)),
            reply_dst=src, reply_dport=1, original_bytes=draw(st.integers(0, 2**64 - 1)),
            original_packets=draw(st.integers(0, 2**40)), reply_bytes=draw(st.integers(0, 2**64 - 1)),
            reply_packets=draw(st.integers(0, 2**40)), start_ns=start,
            end_ns=start + draw(st.sampled_from([0, S, 30 * S])),
        ))
    return indexes, records, options


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(scenarios())
def test_columnar_engine_agrees_with_the_row_path(
    scenario: tuple[list[ClusterIndex], list[ConntrackRecord], dict[str, Any]],
) -> None:
    indexes, records, options = scenario
    own, *peers = indexes
    common = {"cluster": "east", "peers": [("west", p) for p in peers], **options}
    expected: list[Flow] = []
    outcome = Attributor(own, **common).attribute(records, expected)
    table, vector_outcome = VectorAttributor(own, **common).attribute_table(FlowBatch(records).record_table())
    assert FlowBatch(flows=table).flows == expected
    assert vector_outcome == outcome


def test_compiles_once_per_inventory_change() -> None:
    parser = ObjectParser()
    index = ClusterIndex()
    index.replace_pods([parser.pod(make_pod("web", node="node-a", ip="10.1.0.5"))])
    engine = VectorAttributor(index, cluster="east")
    batch = FlowBatch([ConntrackRecord("node-a", "tcp", "ipv4", "10.1.0.5", 1, "10.1.0.6", 2, "10.1.0.6", 2,
                                       "10.1.0.5", 1)]).record_table()
    for _ in range(3):
        engine.attribute_table(batch)
    assert engine.compiles == 1
    index.upsert_pod(parser.pod(make_pod("db", node="node-a", ip="10.1.0.6")))
    table, _ = engine.attribute_table(batch)
    assert engine.compiles == 2
    assert table.column("remote_pod").to_pylist() == ["db", "db"]


def test_equal_overlap_and_age_goes_to_the_first_ended_tenancy_in_both_engines() -> None:
    """Found by the differential test: two retired tenancies of one IP, created in the same second and
    overlapping the record equally; both engines keep the first that ended (the row path's order)."""
    clock = [60 * S]
    parser = ObjectParser(clock=lambda: clock[0])
    index = ClusterIndex(clock=lambda: clock[0])
    for at, name in ((60, "a"), (120, "b")):
        clock[0] = at * S
        index.replace_pods([parser.pod(make_pod(name, node="n", ip="10.1.0.1", created="1970-01-01T00:00:05Z"))])
    clock[0] = 180 * S
    index.replace_pods([])
    record = ConntrackRecord("n", "tcp", "ipv4", "10.1.0.1", 1, "198.51.100.1", 2, "198.51.100.1", 2,
                             "10.1.0.1", 1, 1, 1, 1, 1, 30 * S, 50 * S)
    rows: list[Flow] = []
    Attributor(index).attribute([record], rows)
    table, _ = VectorAttributor(index).attribute_table(FlowBatch([record]).record_table())
    assert rows[0].local.pod == "a"
    assert table.column("local_pod").to_pylist() == ["a", "a"]


def test_compile_min_interval_reuses_a_recent_snapshot_then_catches_up() -> None:
    parser = ObjectParser()
    index = ClusterIndex()
    index.replace_pods([parser.pod(make_pod("web", node="node-a", ip="10.1.0.5"))])
    engine = VectorAttributor(index, cluster="east", compile_min_interval=0.3)
    batch = FlowBatch([ConntrackRecord("node-a", "tcp", "ipv4", "10.1.0.5", 1, "10.1.0.6", 2, "10.1.0.6", 2,
                                       "10.1.0.5", 1)]).record_table()
    engine.attribute_table(batch)
    index.upsert_pod(parser.pod(make_pod("db", node="node-a", ip="10.1.0.6")))
    table, _ = engine.attribute_table(batch)
    assert engine.compiles == 1 and table.column("remote_pod").to_pylist() == ["", ""]  # stale, by choice
    time.sleep(0.35)
    table, _ = engine.attribute_table(batch)
    assert engine.compiles == 2 and table.column("remote_pod").to_pylist() == ["db", "db"]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    prefixes=st.integers(0, 20),  # distinct IPv6 high halves among the keys
    n_keys=st.integers(0, 3000),
)
def test_the_integer_lookup_finds_what_the_string_search_finds(seed: int, prefixes: int, n_keys: int) -> None:
    """_Lookup (a hash table of the 64-bit halves) against numpy's binary search of the same S16 keys."""
    import numpy as np

    from kubenetmon.processors.k8s_attributes.vector import _Lookup

    def searched(keys: Any, queries: Any, valid: Any) -> tuple[Any, Any]:  # what the lookup replaced
        if len(keys) == 0:
            return np.zeros(len(queries), dtype=np.int64), np.zeros(len(queries), dtype=bool)
        pos = np.searchsorted(keys, queries)
        return pos, valid & (keys[np.minimum(pos, len(keys) - 1)] == queries)

    rng = np.random.default_rng(seed)
    v4_high = np.zeros(8, dtype=np.uint8)
    highs = [v4_high] + [rng.integers(0, 256, 8, dtype=np.uint8) for _ in range(prefixes)]

    def addresses(n: int) -> Any:
        out = np.zeros((n, 16), dtype=np.uint8)
        for i in range(n):
            out[i, :8] = highs[int(rng.integers(0, len(highs)))]
            if not out[i, :8].any():
                out[i, 8:12] = (0, 0, 0xFF, 0xFF)
                out[i, 12:] = rng.integers(0, 4, 4)  # a small space: many queries hit
            else:
                out[i, 8:] = rng.integers(0, 4, 8)
        return out.view("S16").ravel()

    keys = np.unique(addresses(n_keys))  # sorted, as the snapshot keeps them
    queries = np.concatenate([addresses(200), keys[rng.integers(0, len(keys), 50)] if len(keys) else keys])
    valid = rng.random(len(queries)) < 0.9
    lookup = _Lookup(keys)
    assert sorted(lookup.table[lookup.table >= 0].tolist()) == list(range(len(keys)))  # every key, once
    pos, found = lookup.find(queries, valid)
    want_pos, want_found = searched(keys, queries, valid)
    assert (found == want_found).all()
    assert (pos[found] == want_pos[want_found]).all()


def test_observers_outside_the_node_list_get_one_string_each_and_leave_the_snapshot_bounded() -> None:
    # An agent may name itself anything: a pod's name ("web", a string the compiled inventory holds
    # but not as a node) or names no inventory has. Each is one dictionary value of the batch, and a
    # flood of new names does not grow the compiled snapshot without bound.
    parser = ObjectParser()
    index = ClusterIndex()
    index.replace_nodes([parser.node(make_node("node-a", internal_ips=["10.0.0.1"], zone="za"))])
    index.replace_pods([parser.pod(make_pod("web", node="node-a", ip="10.1.0.5"))])
    engine = VectorAttributor(index, cluster="east")
    observers = ["web", "node-a", *(f"ghost-{i}" for i in range(6000)), "web"]
    records = [ConntrackRecord(o, "tcp", "ipv4", "10.1.0.5", 1, "198.51.100.1", 2, "198.51.100.1", 2, "10.1.0.5",
                               1, 1, 1, 1, 1) for o in observers]
    table, _ = engine.attribute_table(FlowBatch(records).record_table())
    for name in ("observer", "local_node", "local_pod", "local_availability_zone"):
        dictionary = table.column(name).dictionary.to_pylist()
        assert len(dictionary) == len(set(dictionary)), name
    assert table.column("observer").to_pylist()[::2] == observers
    assert table.column("local_availability_zone").to_pylist()[2:4] == ["za", "za"]
    snapshot = engine.snapshot()
    assert len(snapshot._ids) <= 5000  # node names, zones, clusters, and at most 4096 looked-up texts
