"""``kubenetmon demo``: build, meter, query, check, clean up.

The README's main job. As root on a fresh machine (after ``scripts/setup``)
it shows the real pipeline — one agent per node reading that node's
conntrack table, a gateway attributing flows to pods and zones and cloud
services, chDB storing the original table — on traffic it generates, then
checks every pod pair's bytes against what the nodes' kernels counted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from kubenetmon.demo.conntrack_table import read_conntrack
from kubenetmon.demo.expected import attribute
from kubenetmon.demo.minicluster import MiniCluster, default_topology
from kubenetmon.demo.pipeline import (
    MeteringPipeline,
    PipelineSettings,
    query_chdb,
    write_aws_ranges,
    write_static_inventory,
)
from kubenetmon.demo.traffic import Exchange, PeerServer, TrafficLoop
from kubenetmon.netns import delete_stale

__all__ = ["DEMO_PREFIX", "README_QUERY", "preflight", "run_demo"]

DEMO_PREFIX = "knmdemo"
PORT = 8080

# Addresses of the "public" host. Real AWS prefixes: S3 in eu-west-1 (another
# region than the cluster's us-west-2) and AWS in us-west-2; and a
# documentation address (TEST-NET-2) that no cloud lists.
S3_OTHER_REGION = "52.218.0.10"
AWS_SAME_REGION = "52.94.76.10"
INTERNET_HOST = "198.51.100.10"
AWS_PREFIXES = (
    ("52.218.0.0/17", "eu-west-1", "AMAZON"),
    ("52.218.0.0/17", "eu-west-1", "S3"),
    ("52.94.76.0/22", "us-west-2", "AMAZON"),
)

#: The original README's query (reference/readme_query.sql), bounded to the demo's window.
README_QUERY = """\
SELECT localPod, remotePod, connectionClass, formatReadableSize(sum(bytes))
FROM default.network_flows_0
WHERE date >= toDate('{day}') AND intervalStartTime >= toDateTime({since}) AND direction = 'out'
GROUP BY localPod, remotePod, connectionClass
ORDER BY sum(bytes) DESC"""

_PAIR_QUERY = """\
SELECT localPod, if(remotePod != '', remotePod, toString(remoteIPv4)), direction, sum(bytes)
FROM default.network_flows_0 WHERE intervalStartTime >= toDateTime({since})
GROUP BY 1, 2, 3"""


def preflight() -> str | None:
    """What is missing to run the demo, said so that the user knows what to do; None when all is there."""
    if os.geteuid() != 0:
        return ("kubenetmon demo needs root: it creates network namespaces (CAP_SYS_ADMIN), veth links and "
                "nft rules, and reads their conntrack tables (CAP_NET_ADMIN). Run it as root, e.g. "
                "`sudo ./scripts/demo`.")
    missing = [tool for tool in ("ip", "nft", "conntrack") if shutil.which(tool) is None]
    if missing:
        return (f"kubenetmon demo needs the {', '.join(missing)} command(s): run ./scripts/setup "
                "(or apt-get install iproute2 nftables conntrack).")
    try:
        import chdb  # noqa: F401
    except ImportError:
        return "kubenetmon demo needs the embedded ClickHouse engine: pip install 'kubenetmon[chdb]'."
    return None


def _traffic(cluster: MiniCluster, cluster_ip: str, duration: float) -> list[TrafficLoop]:
    pods = cluster.pods
    fe, co, cat, pay, search = (pods[n] for n in ("frontend-0", "checkout-0", "catalog-0", "payments-0",
                                                   "search-0"))
    assert pay.ipv6
    every_second = [
        *[Exchange(fe.netns, cat.ipv4, PORT, "tcp", 1024, 64 << 10) for _ in range(4)],  # across zones
        *[Exchange(fe.netns, cluster_ip, 80, "tcp", 512, 16 << 10) for _ in range(2)],  # via a ClusterIP
        Exchange(co.netns, pay.ipv4, PORT, "udp", 200, 400, rounds=10),
        Exchange(co.netns, pay.ipv6, PORT, "tcp", 4096, 1024),  # IPv6
        Exchange(co.netns, fe.ipv4, PORT, "tcp", 2048, 2048),  # same zone
        Exchange(fe.netns, S3_OTHER_REGION, PORT, "tcp", 256 << 10, 128),  # upload to S3, another region
        Exchange(search.netns, AWS_SAME_REGION, PORT, "udp", 300, 300, rounds=3),
        Exchange(pay.netns, INTERNET_HOST, PORT, "tcp", 4096, 8192),
    ]
    # One connection that lives through the whole demo.
    long_lived = Exchange(co.netns, cat.ipv4, PORT, "tcp", 8192, 8192, rounds=max(1, int(duration)), pause=1.0)
    return [TrafficLoop(every_second, period=1.0), TrafficLoop([long_lived], period=3600.0)]


def _print_table(header: list[str], rows: list[tuple[Any, ...]]) -> None:
    cells = [header] + [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for i, row in enumerate(cells):
        print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


@contextlib.contextmanager
def _terminate_gracefully() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every namespace and process is removed."""
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wipe(data_dir: Path) -> None:
    for name in ("chdb", "gateway", "logs", "ranges"):
        shutil.rmtree(data_dir / name, ignore_errors=True)
    for path in data_dir.glob("agent-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def run_demo(args: argparse.Namespace) -> int:
    if args.duration <= 0 or args.interval <= 0:
        print("error: --duration and --interval must be positive numbers of seconds", file=sys.stderr)
        return 2
    problem = preflight()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if not args.keep_data:
        _wipe(data_dir)
    stale = delete_stale(f"{DEMO_PREFIX}-")
    if stale:
        print(f"removed {len(stale)} namespaces left by an interrupted demo")
    started = time.time()
    with _terminate_gracefully():
        try:
            ok = _meter(args, data_dir, started)
        except KeyboardInterrupt:
            print("\ninterrupted: everything the demo created has been removed", file=sys.stderr)
            return 130
        except (RuntimeError, TimeoutError, OSError) as exc:
            print(f"\nerror: {exc}\nLogs: {data_dir / 'logs'}. Everything the demo created has been removed.",
                  file=sys.stderr)
            return 1
    return 0 if ok else 1


def _meter(args: argparse.Namespace, data_dir: Path, started: float) -> bool:
    settings = PipelineSettings(interval=args.interval, batch_wait=2.0, log_level="warning")
    print(f"kubenetmon demo: {args.duration:.0f} s of traffic; data in {data_dir}")
    with MiniCluster(default_topology((S3_OTHER_REGION, AWS_SAME_REGION, INTERNET_HOST)), DEMO_PREFIX) as cluster:
        search = cluster.add_cluster_ip("search", cluster.pods["search-0"], port=80, target_port=PORT)
        for node in cluster.nodes.values():
            pods = [p.name for p in cluster.pods.values() if p.node == node.name]
            print(f"  node {node.name} (zone {node.zone}, {node.ipv4}): {', '.join(pods)}")
        print(f"  ClusterIP {search.cluster_ip}:80 -> search-0; public hosts {S3_OTHER_REGION} (S3 eu-west-1), "
              f"{AWS_SAME_REGION} (AWS us-west-2), {INTERNET_HOST} (Internet)")
        assert cluster.public is not None
        servers = [PeerServer(p.netns, ip, PORT) for p in cluster.pods.values() for ip in p.ips]
        servers += [PeerServer(cluster.public.netns, a, PORT) for a in cluster.public.addresses]
        inventory = write_static_inventory(cluster, data_dir / "inventory.yaml")
        ranges = write_aws_ranges(data_dir / "ranges", AWS_PREFIXES)
        attribution = {"source": "static", "static": {"path": str(inventory)}}
        try:
            with MeteringPipeline(cluster, data_dir, attribution, ranges, settings) as pipeline:
                pipeline.start()  # returns when every process reports ready
                print(f"  gateway on 127.0.0.1:{pipeline.gateway_port} -> chDB {pipeline.chdb_path}; "
                      f"{len(cluster.nodes)} agents, {args.interval:g} s interval")
                time.sleep(2 * args.interval)  # every agent's first dump is its baseline
                loops = [loop.start() for loop in _traffic(cluster, search.cluster_ip, args.duration)]
                _show_progress(loops, args.duration)
                for loop in loops:
                    loop.stop()
                time.sleep(3 * args.interval)
                print("  stopping agents and gateway (they drain and flush)...")
                pipeline.stop()
                truth = {name: read_conntrack(node.netns) for name, node in cluster.nodes.items()}
                expected = attribute(truth, cluster)
        finally:
            for server in servers:
                server.stop()
    print(f"  removed every namespace ({DEMO_PREFIX}-*)\n")
    since = int(started // 60 * 60)
    day = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y-%m-%d")
    query = README_QUERY.format(day=day, since=since)
    print("The original README's query, over this run's window:\n")
    print("\n".join("  " + line for line in query.splitlines()) + "\n")
    rows = query_chdb(data_dir / "chdb", query)
    _print_table(["localPod", "remotePod", "connectionClass", "formatReadableSize(sum(bytes))"], rows)
    ok = _check(data_dir / "chdb", since, expected)
    print(f"\nThe data stays in {data_dir / 'chdb'}. The five questions:\n"
          f"  .venv/bin/kubenetmon report all --endpoint chdb://{data_dir / 'chdb'}")
    return ok


def _show_progress(loops: list[TrafficLoop], duration: float) -> None:
    t0 = time.monotonic()
    while (elapsed := time.monotonic() - t0) < duration:
        time.sleep(min(10.0, duration - elapsed))
        done = [r for loop in loops for r in list(loop.results)]
        sent = sum(r.sent_payload + r.received_payload for r in done)
        print(f"  t={time.monotonic() - t0:3.0f}s  {len(done)} connections, {sent / 1e6:.1f} MB of payload")


def _check(chdb_path: Path, since: int, expected: list[Any]) -> bool:
    """Every (local pod, remote, direction) total in the table against the kernels' counters."""
    want: dict[tuple[str, str, str], int] = defaultdict(int)
    for f in expected:
        remote = f.remote.pod or (f.remote.address if f.network_type == "ipv4" else "0.0.0.0")
        want[(f.local.pod or f.local.address, remote, f.direction)] += f.bytes
    got = {(str(a), str(b), str(c)): int(n) for a, b, c, n in query_chdb(chdb_path, _PAIR_QUERY.format(since=since))}
    wrong = {k: (got.get(k, 0), want.get(k, 0)) for k in set(got) | set(want) if got.get(k, 0) != want.get(k, 0)}
    total = sum(want.values())
    if not wrong:
        print(f"\nChecked against the nodes' conntrack counters: {len(want)} (pod, peer, direction) totals, "
              f"{total:,} bytes - every one exact.")
        return True
    print(f"\nMISMATCH against the nodes' conntrack counters in {len(wrong)} of {len(want)} totals:")
    for key, (table, kernel) in sorted(wrong.items()):
        print(f"  {key}: table {table:,} bytes, kernels {kernel:,} bytes")
    return False
