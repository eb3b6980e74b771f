"""Builders shared by the k8s_attributes tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubenetmon.flows import ConntrackRecord
from kubenetmon.processors.k8s_attributes import K8sAttributesProcessor
from kubenetmon.testing import SinkConsumer
from tests.fixtures.kubeapi import KubeAPIServer

# make_processor(config_dict, cluster=..., start=True) -> (processor, sink); see conftest.py.
ProcessorMaker = Callable[..., tuple[K8sAttributesProcessor, SinkConsumer]]


def record(
    src: str,
    dst: str,
    *,
    node: str = "node-a",
    reply_src: str | None = None,
    reply_dst: str | None = None,
    sport: int = 40000,
    dport: int = 80,
    reply_sport: int | None = None,
    original: tuple[int, int] = (1000, 10),
    reply: tuple[int, int] = (5000, 20),
    transport: str = "tcp",
) -> ConntrackRecord:
    """A conntrack record; the reply tuple mirrors the original unless given (NAT)."""
    network_type = "ipv6" if ":" in src else "ipv4"
    return ConntrackRecord(
        node=node, transport=transport, network_type=network_type,
        src=src, sport=sport, dst=dst, dport=dport,
        reply_src=reply_src or dst, reply_sport=reply_sport if reply_sport is not None else dport,
        reply_dst=reply_dst or src, reply_dport=sport,
        original_bytes=original[0], original_packets=original[1],
        reply_bytes=reply[0], reply_packets=reply[1],
        start_ns=1_000, end_ns=2_000,
    )


def kube_config(server: KubeAPIServer, tmp_path: Path, **kubernetes: Any) -> dict[str, Any]:
    """A processor config using the kubernetes source against ``server``, with fast retries."""
    settings = {"kubeconfig": str(server.write_kubeconfig(tmp_path)), "backoff_initial": 0.05,
                "backoff_max": 0.2, **kubernetes}
    return {"source": "kubernetes", "kubernetes": settings}


def eventually(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
