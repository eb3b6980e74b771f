"""Connections that start, end and expire between two dumps: their last bytes come from DESTROY events.

The original polls with zero-on-dump and never listens for DESTROY events,
so such connections are lost (reference §12.1.2). Here the nodes expire
finished entries after one second, the agents dump every three, and the
oracle is the final counters the kernels put in their DESTROY events,
recorded independently with ``conntrack -E``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kubenetmon.demo.conntrack_table import DestroyRecorder
from kubenetmon.demo.expected import attribute
from kubenetmon.demo.minicluster import MiniCluster
from kubenetmon.demo.pipeline import PipelineSettings
from kubenetmon.demo.traffic import Exchange, run_exchanges
from tests.e2e.harness import INTERNET_HOST, PORT, assert_pairs_exact, ground_truth, metered_cluster

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(180)]

SHORT_TIMEOUTS = {
    "net.netfilter.nf_conntrack_udp_timeout": 1,
    "net.netfilter.nf_conntrack_udp_timeout_stream": 1,
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait": 1,
    "net.netfilter.nf_conntrack_tcp_timeout_fin_wait": 1,
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait": 1,
    "net.netfilter.nf_conntrack_tcp_timeout_last_ack": 1,
}


def _expire_fast(cluster: MiniCluster) -> None:
    for node in cluster.nodes.values():
        node.netns.set_sysctls(SHORT_TIMEOUTS)


def test_connections_that_end_between_dumps_are_counted_to_the_last_byte(tmp_path: Path) -> None:
    settings = PipelineSettings(interval=3.0, metrics=True)
    with metered_cluster(tmp_path, settings, prepare=_expire_fast) as m:
        pods = m.cluster.pods
        fe, co = pods["frontend-0"], pods["checkout-0"]
        cat6 = pods["catalog-0"].ipv6
        assert cat6
        burst = [
            *[Exchange(fe.netns, pods["catalog-0"].ipv4, PORT, "tcp", 3000, 9000) for _ in range(5)],
            *[Exchange(co.netns, pods["payments-0"].ipv4, PORT, "udp", 500, 700, rounds=3) for _ in range(5)],
            Exchange(fe.netns, cat6, PORT, "tcp", 1000, 1000),
            Exchange(co.netns, INTERNET_HOST, PORT, "udp", 64, 64),
        ]
        with DestroyRecorder(m.cluster.nodes["node-a"].netns) as node_a, \
                DestroyRecorder(m.cluster.nodes["node-b"].netns) as node_b:
            m.pipeline.start()
            m.wait_until_metering()
            results = []
            for _ in range(3):  # bursts that live well under one interval
                results += run_exchanges(burst)
                time.sleep(2.0)
            assert not [r.error for r in results if r.error]
            time.sleep(2 * settings.interval + 1)  # every entry has expired and been reported
            remaining = ground_truth(m.cluster)  # a dump also reaps what expired
            time.sleep(settings.interval)
            destroyed = m.pipeline.metric("agent-node-a", "kubenetmon_conntrack_events_total") + \
                m.pipeline.metric("agent-node-b", "kubenetmon_conntrack_events_total")
        truth = {"node-a": node_a.entries + remaining["node-a"], "node-b": node_b.entries + remaining["node-b"]}
        ports = {r.client_port for r in results}
        assert {e.sport for e in node_a.entries} >= ports, "every connection ended in a DESTROY event"
        assert not [e for es in remaining.values() for e in es if e.sport in ports]
        assert destroyed >= len(node_a.entries) + len(node_b.entries) > 0
        assert_pairs_exact(m, attribute(truth, m.cluster))
