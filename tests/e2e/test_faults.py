"""Faults, each on its own metered mini-cluster: totals stay exact.

Every test runs known traffic while a part of the pipeline fails, then
compares the table with what both nodes' conntrack tables counted.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kubenetmon.demo.expected import attribute
from kubenetmon.demo.minicluster import MiniCluster
from kubenetmon.demo.pipeline import PipelineSettings
from kubenetmon.demo.traffic import Exchange, TrafficLoop, run_exchanges
from tests.e2e.harness import (
    INTERNET_HOST,
    PORT,
    S3_OTHER_REGION,
    Metered,
    assert_pairs_exact,
    catalog_exchanges,
    chdb_table_dir,
    ground_truth,
    metered_cluster,
    reuse_catalog_ips_and_check,
    unwritable,
)

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(180)]


def _mix(cluster: MiniCluster) -> list[Exchange]:
    """Short TCP and UDP, v4 and v6, across and within zones, and to the outside."""
    pods = cluster.pods
    fe, co = pods["frontend-0"].netns, pods["checkout-0"].netns
    cat6 = pods["catalog-0"].ipv6
    assert cat6
    return [
        Exchange(fe, pods["catalog-0"].ipv4, PORT, "tcp", 1000, 8000),
        Exchange(fe, cat6, PORT, "udp", 300, 600, rounds=3),
        Exchange(co, pods["payments-0"].ipv4, PORT, "udp", 500, 200, rounds=2),
        Exchange(co, pods["frontend-0"].ipv4, PORT, "tcp", 100, 100),
        Exchange(fe, S3_OTHER_REGION, PORT, "tcp", 4000, 100),
        Exchange(co, INTERNET_HOST, PORT, "udp", 100, 100),
    ]


def _long(cluster: MiniCluster, seconds: float) -> Exchange:
    """One connection that lives through the whole fault."""
    pods = cluster.pods
    return Exchange(pods["checkout-0"].netns, pods["search-0"].ipv4, PORT, "tcp", 3000, 3000,
                    rounds=int(seconds / 0.25), pause=0.25)


def _run_through(m: Metered, fault_seconds: float) -> tuple[TrafficLoop, TrafficLoop]:
    m.pipeline.start()
    m.wait_until_metering()
    return (TrafficLoop(_mix(m.cluster), period=0.2).start(),
            TrafficLoop([_long(m.cluster, fault_seconds + 4)], period=0.0).start())


def _finish(m: Metered, loops: tuple[TrafficLoop, ...]) -> None:
    for loop in loops:
        results = loop.stop()
        assert results and not [r.error for r in results if r.error]
    m.settle()


def test_gateway_killed_and_restarted_mid_traffic_counts_every_byte_once(tmp_path: Path) -> None:
    with metered_cluster(tmp_path) as m:
        loops = _run_through(m, fault_seconds=8)
        # Three kills at different points of the agents' and the exporter's cycles.
        for up, down in ((2.0, 2.0), (1.3, 0.5), (0.7, 1.1)):
            time.sleep(up)
            m.pipeline.gateway.kill()  # kill -9: no drain, no flush
            assert m.pipeline.gateway.returncode == -9
            time.sleep(down)  # agents keep metering and queue on disk meanwhile
            m.pipeline.start_gateway()
        time.sleep(1)
        _finish(m, loops)
        assert m.pipeline.gateway.starts == 4
        assert_pairs_exact(m, attribute(ground_truth(m.cluster), m.cluster))


def test_clickhouse_failing_for_several_flushes_loses_nothing(tmp_path: Path) -> None:
    with metered_cluster(tmp_path) as m:
        loops = _run_through(m, fault_seconds=5)
        time.sleep(2)  # the table exists once the gateway has started
        with unwritable(chdb_table_dir(m.pipeline.chdb_path)):
            time.sleep(5)  # five block waits: every insert fails and is retried
            failures = m.pipeline.gateway.log_text().count("retrying in")
        _finish(m, loops)
        assert failures >= 2, m.pipeline.gateway.log_tail()
        assert_pairs_exact(m, attribute(ground_truth(m.cluster), m.cluster))


def test_agents_killed_or_restarted_mid_traffic_count_every_byte_once(tmp_path: Path) -> None:
    with metered_cluster(tmp_path) as m:
        loops = _run_through(m, fault_seconds=6)
        killed, restarted = m.pipeline.agent("node-a"), m.pipeline.agent("node-b")
        for pause in (1.5, 0.8):
            time.sleep(pause)
            killed.kill()  # kill -9: the checkpoint must make the next start exact
            restarted.stop()  # SIGTERM: graceful
            time.sleep(1.2)  # traffic goes on unmetered for a while
            m.pipeline.start_agent("node-a")
            m.pipeline.start_agent("node-b")
        _finish(m, loops)
        assert (killed.starts, restarted.starts) == (3, 3)
        assert_pairs_exact(m, attribute(ground_truth(m.cluster), m.cluster))


def test_pod_deleted_and_its_ip_reused_is_attributed_to_the_right_pod_on_each_side(tmp_path: Path) -> None:
    with metered_cluster(tmp_path, PipelineSettings(metrics=True)) as m:
        m.pipeline.start()
        m.wait_until_metering()
        before = run_exchanges(catalog_exchanges(m))
        m.wait_until_attributed()  # the old pod's bytes reached the gateway while it still existed
        reuse_catalog_ips_and_check(m, before)
