"""The image's kubenetmon at work, inside network namespaces the tests create.

The process runs as a pod of the charts would: root with only NET_ADMIN (the agent) on a
read-only root filesystem, the state directory and /tmp mounted from the host. Traffic and
topology are the conntrack kernel tests' own (tests/receivers/conntrack/conntrack_topology.py),
and so is the oracle: the kernel's counters of the connection, read with ``conntrack -L``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubenetmon.demo.pipeline import write_aws_ranges
from kubenetmon.netns import NamespaceRegistry
from kubenetmon.testing import SinkConsumer
from tests.image.runner import MountedImage
from tests.otlp.otlp_testkit import start_receiver
from tests.receivers.conntrack.conntrack_topology import (
    V4_CLIENT,
    V4_SERVER,
    Pair,
    TcpConnection,
    kernel_counters,
    make_pair,
)

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(1800)]

CONFIG_DIR = "/usr/share/kubenetmon/config"
STATE_DIR = "/var/lib/kubenetmon"  # the agent chart's state volume
INTERVAL = 1.0
NET_ADMIN_ONLY = {"user": "0:0", "capabilities": ["net_admin"]}


@pytest.fixture
def pair() -> Iterator[Pair]:
    with NamespaceRegistry("knmimg") as registry:
        yield make_pair(registry)


class ImageProcess:
    """``kubenetmon run`` from the image in the server namespace; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, image: MountedImage, pair: Pair, configs: list[str], env: dict[str, str], tmp: Path) -> None:
        self.log = tmp / "kubenetmon.log"
        self._volumes = {tmp / "state": STATE_DIR, tmp / "tmp": "/tmp", tmp / "etc": "/etc/kubenetmon"}
        for host in self._volumes:
            host.mkdir(exist_ok=True)
        self._image, self._netns, self._env = image, pair.server.name, env
        self._args = ["kubenetmon", "run", *(a for c in configs for a in ("--config", c))]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self._image.popen(self._args, log=self.log, netns=self._netns, volumes=self._volumes,
                                      env=self._env, **NET_ADMIN_ONLY)

    def wait_until_healthy(self, pair: Pair, port: int, timeout: float = 60.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"kubenetmon exited ({self.proc.returncode}):\n{self.tail()}"
            try:
                with pair.server.entered(), urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"kubenetmon in the image never became healthy:\n{self.tail()}")

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else "(no log)"


def _totals_for(sink: SinkConsumer, src: str, sport: int) -> tuple[int, int, int, int]:
    records = [r for r in sink.records if r.src == src and r.sport == sport]
    return (
        sum(r.original_bytes for r in records), sum(r.original_packets for r in records),
        sum(r.reply_bytes for r in records), sum(r.reply_packets for r in records),
    )


def test_the_agent_from_the_image_counts_a_transfer_exactly(
    kubenetmon_image: str, pair: Pair, tmp_path: Path
) -> None:
    sink = SinkConsumer()
    with pair.server.entered():  # the test's gateway listens on the agent's loopback
        gateway = start_receiver(sink)
    env = {
        "NODE_NAME": "node-a", "COLLECTION_INTERVAL_SECONDS": str(INTERVAL), "UPTIME_WAIT_SECONDS": "0",
        # configure_sysctls stays on (the default): acct, events and timestamp are per network namespace.
        "SKIP_CONNTRACK_SANITY_CHECK": "true",
        "KUBENETMON_GATEWAY_ENDPOINT": f"127.0.0.1:{gateway.port}", "LOG_ENCODING": "console",
    }
    try:
        with MountedImage(kubenetmon_image) as image:
            agent = ImageProcess(image, pair, [f"{CONFIG_DIR}/agent.yaml"], env, tmp_path)
            agent.start()
            try:
                agent.wait_until_healthy(pair, 13133)  # the config's health_check port
                time.sleep(2 * INTERVAL)  # the first dump is the baseline
                conn = TcpConnection(pair.client, pair.server, V4_SERVER)
                conn.send_to_server(250_000)
                conn.send_to_client(40_000)
                expected = kernel_counters(pair, conn.client_port)
                arrived = sink.wait_for(lambda s: _totals_for(s, V4_CLIENT, conn.client_port) == expected, 30)
                time.sleep(3 * INTERVAL)  # more dumps of an idle connection must add nothing
                got = _totals_for(sink, V4_CLIENT, conn.client_port)
                assert arrived and got == expected, (
                    f"agent in the image: {got}, kernel: {expected} (orig bytes, packets, reply bytes, packets)\n"
                    + agent.tail()
                )
                conn.close()
            finally:
                code = agent.stop()
            assert code == 0, f"the agent exited with {code} on SIGTERM:\n{agent.tail()}"
    finally:
        gateway.shutdown(2.0)


QUERY_ROWS = """
import json, sys
import clickhouse_connect
client = clickhouse_connect.get_client(interface="chdb", path=sys.argv[1])
rows = client.query(
    "SELECT localPod, remotePod, proto, sum(bytes) FROM default.network_flows_0 GROUP BY localPod, remotePod, proto"
).result_rows
print(json.dumps([list(r) for r in rows], default=str))
client.close()
"""


def test_the_chdb_image_runs_standalone_yaml_and_writes_the_transfer_into_chdb(
    chdb_image: str, pair: Pair, tmp_path: Path
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "inventory.yaml").write_text(yaml.safe_dump({
        "nodes": [{"name": "node-a", "zone": "us-west-2a", "addresses": ["10.231.9.1"]},
                  {"name": "node-b", "zone": "us-west-2b", "addresses": ["10.231.9.2"]}],
        "pods": [
            {"name": "server-0", "namespace": "default", "node": "node-a", "ips": [V4_SERVER], "labels": {"app": "s"}},
            {"name": "client-0", "namespace": "default", "node": "node-b", "ips": [V4_CLIENT], "labels": {"app": "c"}},
        ],
    }))
    write_aws_ranges(etc / "ranges", [("52.95.0.0/16", "us-west-2", "S3")])
    (etc / "overlay.yaml").write_text(yaml.safe_dump({
        # Only an AWS file is at hand; test-speed blocks.
        "processors": {"cloud_prefix": {"sources": {n: {"enabled": False} for n in ("gcp", "google", "azure")}}},
        "exporters": {"clickhouse": {"batch": {"max_wait": 1.0, "align": False}}},
    }))
    env = {
        "NODE_NAME": "node-a", "COLLECTION_INTERVAL_SECONDS": str(INTERVAL), "SKIP_CONNTRACK_SANITY_CHECK": "true",
        "KUBENETMON_INVENTORY": "/etc/kubenetmon/inventory.yaml", "CLOUD_RANGES_DIR": "/etc/kubenetmon/ranges",
        "CLOUD_RANGES_OFFLINE": "true", "CLUSTER": "image-test",
    }
    with MountedImage(chdb_image) as image:
        standalone = ImageProcess(
            image, pair, [f"{CONFIG_DIR}/standalone.yaml", "/etc/kubenetmon/overlay.yaml"], env, tmp_path
        )
        standalone.start()
        try:
            standalone.wait_until_healthy(pair, 13133)
            time.sleep(2 * INTERVAL)
            conn = TcpConnection(pair.client, pair.server, V4_SERVER)
            conn.send_to_server(120_000)
            conn.send_to_client(30_000)
            ob, _, rb, _ = kernel_counters(pair, conn.client_port)
            time.sleep(4 * INTERVAL)  # dumps, then the exporter's 1 s blocks
        finally:
            code = standalone.stop()
        assert code == 0, f"standalone exited with {code} on SIGTERM:\n{standalone.tail()}"
        query = image.run(["python", "-c", QUERY_ROWS, f"{STATE_DIR}/chdb"], timeout=300,
                          volumes={tmp_path / "state": STATE_DIR, tmp_path / "tmp": "/tmp"}, **NET_ADMIN_ONLY)
    assert query.returncode == 0, f"querying chDB in the image failed:\n{query.stderr}"
    rows: list[list[Any]] = json.loads(query.stdout)
    pair_bytes = sum(int(r[3]) for r in rows if (r[0], r[1], r[2]) == ("server-0", "client-0", "tcp"))
    assert pair_bytes == ob + rb, f"chDB rows {rows}; kernel: {ob} + {rb} bytes\n{standalone.tail()}"
    conn.close()
