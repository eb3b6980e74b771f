"""The shipped one-machine config (config/standalone.yaml) on a real node namespace.

One process — conntrack of the node, static inventory, cloud ranges, chDB —
with the config's own environment variables, must store exactly what that
node's kernel counted.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from kubenetmon.demo.conntrack_table import read_conntrack
from kubenetmon.demo.expected import attribute
from kubenetmon.demo.minicluster import MiniCluster
from kubenetmon.demo.pipeline import REPO_CONFIG_DIR, write_aws_ranges, write_static_inventory
from kubenetmon.demo.processes import ProcessSet, free_port, wait_until_ready
from kubenetmon.demo.traffic import Exchange, PeerServer, run_exchanges
from tests.e2e.harness import (
    AWS_PREFIXES,
    INTERNET_HOST,
    PORT,
    S3_OTHER_REGION,
    expected_pairs,
    table_pairs,
    table_rows,
)

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(120)]

STANDALONE = REPO_CONFIG_DIR / "standalone.yaml"


@pytest.mark.skipif(not STANDALONE.exists(), reason="config/standalone.yaml is not in this checkout")
def test_standalone_config_meters_one_node_exactly(cluster: MiniCluster, tmp_path: Path) -> None:
    node = cluster.nodes["node-b"]
    assert cluster.public is not None
    servers = [PeerServer(p.netns, ip, PORT) for p in cluster.pods.values() for ip in p.ips]
    servers += [PeerServer(cluster.public.netns, a, PORT) for a in cluster.public.addresses]
    health = free_port()
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({
        # Only an AWS file is at hand; test-speed blocks; no metrics port to collide on.
        "processors": {"cloud_prefix": {"sources": {n: {"enabled": False} for n in ("gcp", "google", "azure")}}},
        "exporters": {"clickhouse": {"batch": {"max_wait": 1.0, "align": False}}},
        "service": {"telemetry": {"metrics": {"address": ""}}},
    }))
    env = {
        "COLLECTION_INTERVAL_SECONDS": "1",
        "NODE_NAME": node.name,
        "CONNTRACK_NETNS": node.netns.name,
        "KUBENETMON_STATE_DIR": str(tmp_path / "state"),
        "SKIP_CONNTRACK_SANITY_CHECK": "true",
        "KUBENETMON_INVENTORY": str(write_static_inventory(cluster, tmp_path / "inventory.yaml")),
        "CLOUD_RANGES_DIR": str(write_aws_ranges(tmp_path / "ranges", AWS_PREFIXES).parent),
        "CLOUD_RANGES_OFFLINE": "true",
        "CLICKHOUSE_ENDPOINT": f"chdb://{tmp_path / 'chdb'}",
        "HEALTH_CHECK_ADDRESS": f"127.0.0.1:{health}",
        "CLUSTER": cluster.topology.cluster,
    }
    pods = cluster.pods
    try:
        with ProcessSet(tmp_path / "logs") as procs:
            proc = procs.spawn("standalone", [STANDALONE, overlay], env)
            wait_until_ready(health, proc)
            time.sleep(2)  # the first dump is the baseline
            results = run_exchanges([
                Exchange(pods["frontend-0"].netns, pods["catalog-0"].ipv4, PORT, "tcp", 2000, 9000, rounds=2),
                Exchange(pods["checkout-0"].netns, pods["payments-0"].ipv4, PORT, "udp", 300, 500, rounds=4),
                Exchange(pods["search-0"].netns, pods["payments-0"].ipv4, PORT, "tcp", 100, 100),  # same node
                Exchange(pods["payments-0"].netns, S3_OTHER_REGION, PORT, "tcp", 5000, 10),
                Exchange(pods["frontend-0"].netns, INTERNET_HOST, PORT, "udp", 10, 10),  # not via node-b
            ])
            assert not [r.error for r in results if r.error]
            time.sleep(3)
            assert proc.stop() == 0, proc.log_tail()
    finally:
        for server in servers:
            server.stop()
    expected = attribute({node.name: read_conntrack(node.netns)}, cluster)
    got = table_pairs(table_rows(tmp_path / "chdb"))
    assert got == expected_pairs(expected)
    assert ("payments-0", S3_OTHER_REGION, "out", "tcp", "ipv4") in got
    assert not [key for key in got if INTERNET_HOST in key], "node-b never saw that flow"
