"""Small builders of records and flows for framework tests."""

from __future__ import annotations

from kubenetmon.flows import ConntrackRecord, Endpoint, Flow, FlowBatch


def record(i: int = 1, node: str = "node-a", nbytes: int = 100) -> ConntrackRecord:
    return ConntrackRecord(
        node=node, transport="tcp", network_type="ipv4",
        src=f"10.0.0.{i}", sport=40000 + i, dst="10.0.1.1", dport=80,
        reply_src="10.0.1.1", reply_sport=80, reply_dst=f"10.0.0.{i}", reply_dport=40000 + i,
        original_bytes=nbytes, original_packets=1, reply_bytes=2 * nbytes, reply_packets=2,
        start_ns=1, end_ns=2,
    )


def flow(i: int = 1, nbytes: int = 100, direction: str = "out") -> Flow:
    return Flow(
        direction=direction, transport="tcp", network_type="ipv4",
        local=Endpoint(address=f"10.0.0.{i}", port=40000 + i, pod=f"client-{i}"),
        remote=Endpoint(address="10.0.1.1", port=80, pod="server"),
        bytes=nbytes, packets=1,
    )


def batch(n: int = 1, start: int = 1) -> FlowBatch:
    return FlowBatch(flows=[flow(i) for i in range(start, start + n)])
