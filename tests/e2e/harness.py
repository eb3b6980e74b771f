"""Helpers of the end-to-end tests: a metered mini-cluster and what its table and kernels say."""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kubenetmon.demo.conntrack_table import ConntrackEntry, read_conntrack
from kubenetmon.demo.expected import ExpectedFlow
from kubenetmon.demo.minicluster import MiniCluster, Pod, default_topology
from kubenetmon.demo.pipeline import MeteringPipeline, PipelineSettings, query_chdb, write_aws_ranges
from kubenetmon.demo.traffic import PeerServer
from tests.fixtures.kubeapi import KubeAPIServer

#: Namespace-name prefix of everything these tests create.
PREFIX = "knme2e"

#: A real S3 prefix of eu-west-1 (from AWS's ip-ranges.json), so the cluster
#: (aws, us-west-2) sees it as another region's S3; and a documentation
#: address (TEST-NET-2) that no cloud lists: the public Internet.
S3_OTHER_REGION = "52.218.0.10"
S3_PREFIX = "52.218.0.0/17"
AWS_SAME_REGION = "52.94.76.10"
INTERNET_HOST = "198.51.100.10"
PUBLIC_ADDRESSES = (S3_OTHER_REGION, AWS_SAME_REGION, INTERNET_HOST)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root: network namespaces and real conntrack tables")


#: Real prefixes from AWS's ip-ranges.json: S3 in eu-west-1 is listed as AMAZON,
#: S3 and EC2 (S3 must win); 52.94.76.0/22 is AMAZON in our own region.
AWS_PREFIXES: tuple[tuple[str, str, str], ...] = (
    (S3_PREFIX, "eu-west-1", "AMAZON"),
    (S3_PREFIX, "eu-west-1", "S3"),
    (S3_PREFIX, "eu-west-1", "EC2"),
    ("52.94.76.0/22", "us-west-2", "AMAZON"),
)


def publish(api: KubeAPIServer, cluster: MiniCluster) -> None:
    """Serve the cluster's nodes and pods from the loopback API server, as a real cluster would."""
    for node in cluster.nodes.values():
        api.add_node(node.name, internal_ips=[node.ipv4, node.ipv6], zone=node.zone)
    for pod in cluster.pods.values():
        api.add_pod(pod.name, pod.namespace, node=pod.node, ips=pod.ips, labels=pod.labels)


PORT = 7100

#: Columns read back from the table, summed over intervals.
ROW_COLUMNS = (
    "localPod", "localNamespace", "localApp", "localNode", "localAvailabilityZone",
    "remotePod", "remoteNamespace", "remoteApp", "remoteNode", "remoteAvailabilityZone",
    "toString(localIPv4)", "toString(remoteIPv4)", "direction", "proto", "connectionClass",
    "localCloud", "localRegion", "localCluster", "remoteCloud", "remoteRegion", "remoteCloudService",
)
ROWS_SQL = (
    f"SELECT {', '.join(ROW_COLUMNS)}, sum(bytes), sum(packets) FROM default.network_flows_0 "
    f"GROUP BY {', '.join(ROW_COLUMNS)}"
)


@dataclass(frozen=True)
class Row:
    """One group of table rows (all intervals summed)."""

    values: dict[str, Any]
    bytes: int
    packets: int

    def __getitem__(self, column: str) -> Any:
        return self.values[column]

    @property
    def network_type(self) -> str:
        # The table has IPv4 columns only: IPv6 flows carry 0.0.0.0 on both sides.
        both_zero = self["toString(localIPv4)"] == "0.0.0.0" and self["toString(remoteIPv4)"] == "0.0.0.0"
        return "ipv6" if both_zero else "ipv4"

    @property
    def local(self) -> str:
        return str(self["localPod"] or self["toString(localIPv4)"])

    @property
    def remote(self) -> str:
        return str(self["remotePod"] or self["toString(remoteIPv4)"])


def table_rows(source: MeteringPipeline | Path) -> list[Row]:
    """The table's rows, summed over intervals: from a stopped pipeline or a chDB path."""
    rows = source.query(ROWS_SQL) if isinstance(source, MeteringPipeline) else query_chdb(source, ROWS_SQL)
    n = len(ROW_COLUMNS)
    return [Row(dict(zip(ROW_COLUMNS, r[:n], strict=True)), int(r[n]), int(r[n + 1])) for r in rows]


PairKey = tuple[str, str, str, str, str]  # local, remote, direction, transport, network type


def table_pairs(rows: Iterable[Row]) -> dict[PairKey, int]:
    totals: dict[PairKey, int] = defaultdict(int)
    for r in rows:
        totals[(r.local, r.remote, str(r["direction"]), str(r["proto"]), r.network_type)] += r.bytes
    return dict(totals)


def expected_pairs(flows: Iterable[ExpectedFlow]) -> dict[PairKey, int]:
    totals: dict[PairKey, int] = defaultdict(int)
    for f in flows:
        # IPv6 endpoints without a pod are written as 0.0.0.0 (no IPv6 column).
        local = f.local.pod or (f.local.address if f.network_type == "ipv4" else "0.0.0.0")
        remote = f.remote.pod or (f.remote.address if f.network_type == "ipv4" else "0.0.0.0")
        totals[(local, remote, f.direction, f.transport, f.network_type)] += f.bytes
    return dict(totals)


def ground_truth(cluster: MiniCluster) -> dict[str, list[ConntrackEntry]]:
    """Every node's TCP/UDP conntrack entries and their counters, now."""
    return {name: read_conntrack(node.netns) for name, node in cluster.nodes.items()}


@dataclass
class Metered:
    """A mini-cluster served by the loopback API server and metered by the real processes."""

    cluster: MiniCluster
    api: KubeAPIServer
    pipeline: MeteringPipeline
    servers: list[PeerServer] = field(default_factory=list)

    def serve(self, pod: Pod) -> None:
        self.servers += [PeerServer(pod.netns, ip, PORT) for ip in pod.ips]

    def wait_until_metering(self) -> None:
        """Every agent has taken its first (baseline) dump; ``pipeline.start()`` waited for readiness."""
        time.sleep(2 * self.pipeline.settings.interval)

    def wait_until_attributed(self, timeout: float = 30.0) -> None:
        """Wait until the gateway has attributed every record the agents sent (its count stays still).

        Needs ``PipelineSettings(metrics=True)``. The OTLP receiver counts a
        record only after the processors consumed it, so a still count after
        the traffic stopped means attribution is done.
        """
        quiet = 2.5 * self.pipeline.settings.interval
        deadline = time.monotonic() + timeout
        last, since = -1.0, time.monotonic()
        while time.monotonic() < deadline:
            now = self.pipeline.metric("gateway", "kubenetmon_receiver_accepted_records_total")
            if now != last:
                last, since = now, time.monotonic()
            elif now > 0 and time.monotonic() - since >= quiet:
                return
            time.sleep(0.2)
        raise TimeoutError(f"the gateway kept receiving records for {timeout:.0f}s\n{self.pipeline.logs()}")

    def settle(self) -> None:
        """Give the last deltas time to leave the agents (the stop then drains the rest)."""
        time.sleep(3 * self.pipeline.settings.interval)


@contextlib.contextmanager
def metered_cluster(
    work_dir: Path,
    settings: PipelineSettings | None = None,
    prepare: Callable[[MiniCluster], None] | None = None,
) -> Iterator[Metered]:
    """Build, publish, meter; on exit stop every process and remove every namespace."""
    require_root()
    with MiniCluster(default_topology(PUBLIC_ADDRESSES), PREFIX) as cluster, KubeAPIServer() as api:
        if prepare is not None:
            prepare(cluster)
        publish(api, cluster)
        kubeconfig = api.write_kubeconfig(work_dir)
        ranges = write_aws_ranges(work_dir / "ranges", AWS_PREFIXES)
        attribution = {"source": "kubernetes",
                       "kubernetes": {"kubeconfig": str(kubeconfig), "backoff_initial": 0.2, "backoff_max": 1.0}}
        pipeline = MeteringPipeline(cluster, work_dir, attribution, ranges, settings or PipelineSettings())
        metered = Metered(cluster, api, pipeline)
        try:
            for pod in cluster.pods.values():
                metered.serve(pod)
            assert cluster.public is not None
            metered.servers += [PeerServer(cluster.public.netns, a, PORT) for a in cluster.public.addresses]
            yield metered
        finally:
            pipeline.stop()
            for server in metered.servers:
                server.stop()


def chdb_table_dir(chdb_path: Path, table: str = "network_flows_0", database: str = "default") -> Path:
    """The data directory of a chDB table: ``store/<uuid[:3]>/<uuid>`` from its ATTACH metadata."""
    attach = (chdb_path / "metadata" / database / f"{table}.sql").read_text().split("\n", 1)[0]
    uuid = attach.split("UUID '", 1)[1].split("'", 1)[0]
    return chdb_path / "store" / uuid[:3] / uuid


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[str]:
    """Make a directory unwritable even for root for the block; yields how.

    ``chattr +i`` (immutable) where the file system supports it, else a
    read-only bind mount of the directory onto itself (overlay file systems
    in containers have no immutable flag). Either way new parts cannot be
    created: every insert into the table fails until the block ends.
    """
    import subprocess

    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False).returncode == 0:
        try:
            yield "chattr +i"
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        return
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)], check=True)
        yield "read-only bind mount"
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def assert_pairs_exact(m: Metered, expected: list[ExpectedFlow]) -> list[Row]:
    """Stop everything, then compare the table's per-pair bytes to the oracle; returns the rows."""
    m.pipeline.stop()
    rows = table_rows(m.pipeline)
    want, got = expected_pairs(expected), table_pairs(rows)
    assert got == want, _difference(got, want) + "\n" + m.pipeline.logs()
    return rows


def _difference(got: dict[PairKey, int], want: dict[PairKey, int]) -> str:
    lines = ["pair: table vs kernels"]
    for key in sorted(set(got) | set(want)):
        if got.get(key) != want.get(key):
            lines.append(f"  {key}: {got.get(key)} vs {want.get(key)}")
    return "\n".join(lines)


def catalog_exchanges(m: Metered) -> list[Any]:
    """frontend-0 → the catalog pod of the moment (catalog-0, or catalog-1 once it took its IPs), v4 and v6."""
    from kubenetmon.demo.traffic import Exchange

    cluster = m.cluster
    frontend = cluster.pods["frontend-0"]
    catalog = cluster.pods.get("catalog-0") or cluster.pods["catalog-1"]
    assert catalog.ipv6
    return [Exchange(frontend.netns, catalog.ipv4, PORT, "tcp", 2000, 3000, rounds=2),
            Exchange(frontend.netns, catalog.ipv6, PORT, "udp", 100, 200, rounds=3)]


def reuse_catalog_ips_and_check(m: Metered, before: list[Any]) -> None:
    """Delete catalog-0, give its IPv4/IPv6 to a new pod catalog-1, exchange again; then every pair is
    exact, with the ``before`` exchanges' bytes on the old pod and the later ones on the new pod."""
    from kubenetmon.demo.expected import attribute
    from kubenetmon.demo.minicluster import PodSpec
    from kubenetmon.demo.traffic import run_exchanges

    cluster = m.cluster
    old = cluster.delete_pod("catalog-0")
    m.api.delete_pod(old.name, old.namespace)
    new = cluster.add_pod(PodSpec("catalog-1", "shop", "catalog", "node-b"), ipv4=old.ipv4, ipv6=old.ipv6)
    m.api.add_pod(new.name, new.namespace, node=new.node, ips=new.ips, labels=new.labels)
    m.serve(new)
    time.sleep(m.pipeline.settings.interval)  # the change reaches the gateway's watch at once; one interval
    after = run_exchanges(catalog_exchanges(m))
    assert not [r.error for r in before + after if r.error]
    m.settle()

    truth = ground_truth(cluster)
    old_ports = {r.client_port for r in before}
    old_entries = {n: [e for e in es if e.sport in old_ports] for n, es in truth.items()}
    new_entries = {n: [e for e in es if e.sport not in old_ports] for n, es in truth.items()}
    expected = attribute(old_entries, cluster, lambda a: old if a in old.ips else cluster.pod_by_ip(a))
    expected += attribute(new_entries, cluster)
    rows = assert_pairs_exact(m, expected)
    sent = {pod: sum(r.bytes for r in rows if (r["localPod"], r["remotePod"], r["direction"])
                     == ("frontend-0", pod, "out")) for pod in ("catalog-0", "catalog-1")}
    assert sent["catalog-0"] > 4000 and sent["catalog-1"] > 4000
