#!/usr/bin/env python3
"""cloud_prefix: longest-prefix-match lookups over the real provider files.

Loads every real document in shared/data/cloud-ranges (AWS, GCP, Azure,
Oracle: IPv4 and IPv6), then measures, in one run on one core:

* load time: read + JSON + parse + precedence + both tries, and the RSS the
  table (and the per-source state the processor keeps) adds;
* lookups/s of the **columnar path** (``RemoteClassifier.classify_column``:
  disjoint ranges + one ``searchsorted`` per distinct address, on an Arrow
  address column) and of the **old path** measured in the same run
  (``PrefixTable.lookup`` / ``RemoteClassifier.classify``: one pytricia
  lookup per address text), against a plain ``dict.get`` of the same
  addresses (the floor for anything per address in Python) and a naive
  ``ipaddress`` scan of every network (on a small sample; it also checks
  that both give the same answer); the columnar answers are checked equal
  to the trie's on the whole sample;
* µs per flow record of the processor's ``consume`` on 10k-flow batches
  (2k distinct remotes, the steady state of a gateway): the columnar
  processor on an Arrow batch, against the previous row-wise ``consume``
  (kept below as ``row_wise_consume``, copied from the commit before the
  rewrite) on the same flows as Python rows, in the same run.

Times are CPU time of this process (``time.process_time``), so that other
work on the machine does not count against the rates. Targets: >= 1,000,000
lookups/s (columnar path), load <= 3 s (CPU). Writes its section of
docs/benchmarks.md (``--no-doc`` to skip).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import ipaddress
import json
import logging
import os
import platform
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _report import replace_section  # noqa: E402

from kubenetmon.component import Kind  # noqa: E402
from kubenetmon.flows import ConnectionClass, Endpoint, Flow, FlowBatch, flows_from_columns, pack_addresses  # noqa: E402
from kubenetmon.identity import Identity  # noqa: E402
from kubenetmon.processors.cloud_prefix import CloudPrefixConfig, factory  # noqa: E402
from kubenetmon.processors.cloud_prefix.config import SourceConfig, SourcesConfig  # noqa: E402
from kubenetmon.processors.cloud_prefix.fetch import RangeLoader  # noqa: E402
from kubenetmon.processors.cloud_prefix.processor import Classification, RemoteClassifier  # noqa: E402
from kubenetmon.processors.cloud_prefix.range_index import address_keys  # noqa: E402
from kubenetmon.processors.cloud_prefix.table import PrefixTable  # noqa: E402
from kubenetmon.testing import SinkConsumer, create_component, create_settings  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- benchmarks:cloud_prefix:start -->", "<!-- benchmarks:cloud_prefix:end -->"
TARGET_LOOKUPS, TARGET_LOAD = 1_000_000, 3.0


def ranges_dir() -> Path:
    for candidate in (ROOT.parent / "shared" / "data" / "cloud-ranges", Path("/work/shared/data/cloud-ranges")):
        if candidate.exists():
            return candidate
    sys.exit("the real provider files (shared/data/cloud-ranges) are not here")


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def config(directory: Path) -> CloudPrefixConfig:
    return CloudPrefixConfig(
        files_dir=str(directory), offline=True,
        sources=SourcesConfig(google=SourceConfig(enabled=False), oracle=SourceConfig(enabled=True)),
    )


def load(directory: Path) -> tuple[RangeLoader, PrefixTable, float, float]:
    """The loader and its table, with the CPU and the wall seconds it took."""
    started, wall = time.process_time(), time.perf_counter()
    loader = RangeLoader(config(directory), logging.getLogger("bench"))
    loader.load_local()
    table = loader.build()
    return loader, table, time.process_time() - started, time.perf_counter() - wall


def sample_addresses(directory: Path, n: int, rng: random.Random) -> list[str]:
    """Half inside listed IPv4 prefixes, a fifth inside IPv6 prefixes, the rest random IPv4."""
    aws = json.loads((directory / "aws-ip-ranges.json").read_text())
    azure = json.loads((directory / "azure-servicetags-public.json").read_text())
    v4 = [p["ip_prefix"] for p in aws["prefixes"]] + [
        p for g in azure["values"] for p in g["properties"]["addressPrefixes"] if ":" not in p]
    v6 = [p["ipv6_prefix"] for p in aws["ipv6_prefixes"]] + [
        p for g in azure["values"] for p in g["properties"]["addressPrefixes"] if ":" in p]

    def inside(prefix: str) -> str:
        net = ipaddress.ip_network(prefix)
        return str(net.network_address + rng.randrange(min(net.num_addresses, 2**32)))

    out = [inside(rng.choice(v4)) for _ in range(n // 2)]
    out += [inside(rng.choice(v6)) for _ in range(n // 5)]
    out += [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(n - len(out))]
    rng.shuffle(out)
    return out


def rate(fn: Callable[[str], object], addresses: list[str], repeat: int = 3) -> float:
    """Best of ``repeat`` passes, in lookups per second."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for a in addresses:
            fn(a)
        best = min(best, time.process_time() - started)
    return len(addresses) / best


def naive_scan(networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, object]]) -> Callable[[str], object]:
    def lookup(text: str) -> object:
        address = ipaddress.ip_address(text)
        best: tuple[int, object] | None = None
        for net, detail in networks:
            if net.version == address.version and address in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, detail)
        return best[1] if best else None

    return lookup


def row_wise_consume(classifier: RemoteClassifier, identity: Identity, flows: list[Flow],
                     cache: dict[str, Classification]) -> None:
    """The previous ``CloudPrefixProcessor.consume`` loop (rows, address cache), without its metrics calls."""
    seen: dict[int, Classification] = {}
    classes: Counter[str] = Counter()
    for flow in flows:
        remote = flow.remote
        result = seen.get(id(remote))
        if result is None:
            address = remote.address
            result = cache.get(address)
            if result is None:
                try:
                    result = classifier.classify(address)
                except ValueError:
                    result = Classification(ConnectionClass.UNKNOWN, "", "", "")
                cache[address] = result
            remote.cloud, remote.region, remote.cloud_service = result[1], result[2], result[3]
            seen[id(remote)] = result
        flow.connection_class = result.connection_class
        classes[result.connection_class] += 1
        local = flow.local
        if not local.cloud:
            local.cloud = identity.cloud
        if not local.region:
            local.region = identity.region
        if not local.cluster:
            local.cluster = identity.cluster
        if not local.cell:
            local.cell = identity.cell


def consume_costs(table_dir: Path, addresses: list[str], batch_size: int = 10_000) -> tuple[float, float]:
    """µs per flow record of the columnar processor and of the previous row-wise loop, same flows."""
    identity = Identity(cloud="aws", region="us-east-1")
    proc = create_component(factory, config(table_dir), consumer=SinkConsumer(), settings=create_settings(
        Kind.PROCESSOR, "cloud_prefix", identity=identity))
    proc.start(None)
    # A gateway sees the same remote addresses over and over: 2,000 distinct remotes per 10k flows.
    remotes = addresses[:2000]
    pairs = [remotes[i % len(remotes)] for i in range(batch_size // 2) for _ in range(2)]
    table = flows_from_columns({
        "direction": ["out", "in"] * (batch_size // 2), "transport": ["tcp"] * batch_size,
        "network_type": ["ipv6" if ":" in a else "ipv4" for a in pairs],
        "local_address": ["10.0.0.1"] * batch_size, "local_port": [443] * batch_size,
        "remote_address": pairs, "remote_port": [5000] * batch_size,
    })
    rounds = 20
    proc.consume(FlowBatch(flows=table))  # warm up
    started = time.process_time()
    for _ in range(rounds):
        proc.consume(FlowBatch(flows=table))
    columnar = (time.process_time() - started) / (rounds * batch_size) * 1e6
    classifier = proc._state.classifier  # the same table and private space as the processor's
    proc.shutdown()

    def row_batch() -> list[Flow]:
        flows = []
        for i in range(batch_size // 2):
            local, remote = Endpoint("10.0.0.1", 443), Endpoint(remotes[i % len(remotes)], 5000)
            flows += [Flow("out", "tcp", "ipv4", local, remote), Flow("in", "tcp", "ipv4", local, remote)]
        return flows

    cache: dict[str, Classification] = {}
    row_wise_consume(classifier, identity, row_batch(), cache)  # fill the cache, as a running gateway has
    batches = [row_batch() for _ in range(5)]
    started = time.process_time()
    for flows in batches:
        row_wise_consume(classifier, identity, flows, cache)
    rows = (time.process_time() - started) / (len(batches) * batch_size) * 1e6
    return columnar, rows


def column_rate(classifier: RemoteClassifier, column: Any, repeat: int = 3) -> float:
    """Best of ``repeat`` passes of the columnar classification, in lookups per second."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        classifier.classify_column(column)
        best = min(best, time.process_time() - started)
    return len(column) / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lookups", type=int, default=300_000, help="addresses in the timed sample")
    parser.add_argument("--naive", type=int, default=30, help="addresses for the naive ipaddress scan")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    directory = ranges_dir()
    rng = random.Random(7)

    gc.collect()
    rss_before = rss_mib()
    loader, table, load_s, load_wall = load(directory)
    gc.collect()
    rss_loaded = rss_mib()
    counts = table.counts()
    v4 = sum(n for (_, fam), n in counts.items() if fam == "ipv4")
    v6 = sum(n for (_, fam), n in counts.items() if fam == "ipv6")
    docs = {name: json.loads((directory / f).read_text()) for name, f in (
        ("aws", "aws-ip-ranges.json"), ("gcp", "gcp-cloud.json"), ("azure", "azure-servicetags-public.json"),
        ("oracle", "oracle-public-ip-ranges.json"))}
    listed = (len(docs["aws"]["prefixes"]) + len(docs["aws"]["ipv6_prefixes"]) + len(docs["gcp"]["prefixes"])
              + sum(len(g["properties"]["addressPrefixes"]) for g in docs["azure"]["values"])
              + sum(len(r["cidrs"]) for r in docs["oracle"]["regions"]))
    del docs

    rss_table = rss_mib()
    started = time.process_time()
    classifier = RemoteClassifier(table, "aws", "us-east-1")  # tries with private space + the range index
    classifier_s = time.process_time() - started
    gc.collect()
    rss_classifier = rss_mib() - rss_table
    addresses = sample_addresses(directory, args.lookups, rng)
    column = pack_addresses(addresses)
    floor = {a: table.lookup(a) for a in addresses}
    results = {
        "dict.get (floor)": rate(floor.get, addresses),
        "PrefixTable.lookup (trie, old path)": rate(table.lookup, addresses),
        "RemoteClassifier.classify (trie, old path)": rate(classifier.classify, addresses),
        "RemoteClassifier.classify_column (columnar)": column_rate(classifier, column),
    }
    keys, _ = address_keys(column)
    repeated = np.concatenate([keys[:2000]] * (len(keys) // 2000))  # 2k distinct addresses, as a gateway sees
    results["classify_column, 2k distinct in 300k (columnar)"] = column_rate(classifier, pa.Array.from_buffers(
        pa.binary(16), len(repeated), [None, pa.py_buffer(repeated.tobytes())]))
    got = classifier.classify_column(column)
    got_columns = [c.to_pylist() for c in (got.connection_class, got.cloud, got.region, got.cloud_service)]
    disagree = sum(1 for i, a in enumerate(addresses)
                   if tuple(c[i] for c in got_columns) != tuple(classifier.classify(a)))
    networks = [(ipaddress.ip_network(p), d) for p, d in _table_items(table)]
    naive = naive_scan(networks)
    naive_sample = addresses[: args.naive]
    mismatches = [a for a in naive_sample if naive(a) != table.lookup(a)]
    results["naive ipaddress scan"] = rate(naive, naive_sample, repeat=1)
    columnar_us, rows_us = consume_costs(directory, addresses)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    lookups = results["RemoteClassifier.classify_column (columnar)"]
    ok = lookups >= TARGET_LOOKUPS and load_s <= TARGET_LOAD and not mismatches and not disagree
    lines = [
        f"prefixes: {len(table)} distinct ({v4} IPv4, {v6} IPv6) from {listed} listed entries",
        f"load: {load_s:.2f} s CPU, {load_wall:.2f} s wall (target <= {TARGET_LOAD:.0f} s); classifier build "
        f"(tries + range index) {classifier_s:.2f} s CPU; RSS +{rss_loaded - rss_before:.0f} MiB, classifier "
        f"+{rss_classifier:.0f} MiB",
        *(f"{name}: {r:,.0f}/s" for name, r in results.items()),
        f"processor consume, 10k flows / 2k remotes: columnar {columnar_us:.3f} us/flow, previous row-wise loop "
        f"{rows_us:.3f} us/flow ({rows_us / columnar_us:.1f}x)",
        f"columnar classification agrees with the trie on {len(addresses) - disagree}/{len(addresses)} addresses",
        f"naive scan agrees with the table on {len(naive_sample) - len(mismatches)}/{len(naive_sample)} addresses",
        f"peak RSS: {peak:.0f} MiB; result: {'PASS' if ok else 'FAIL'}",
    ]
    lines.append(f"load average during the run: {os.getloadavg()[0]:.2f} (2 cores; other work skews the rates)")
    print("\n".join(lines))
    if not args.no_doc:
        write_doc(table, results, {
            "load_s": load_s, "load_wall": load_wall, "rss": rss_loaded - rss_before, "rss_classifier": rss_classifier,
            "classifier_s": classifier_s, "columnar_us": columnar_us, "rows_us": rows_us, "disagree": disagree,
            "sample": len(addresses), "peak": peak,
            "listed": listed, "v4": v4, "v6": v6, "ok": ok, "loadavg": os.getloadavg()[0],
        })
    del loader
    return 0 if ok else 1


def _table_items(table: PrefixTable) -> list[tuple[str, object]]:
    # Every prefix with its detail, to build the naive reference.
    return list(table.entries())


def write_doc(table: PrefixTable, results: dict[str, float], m: dict[str, Any]) -> None:
    load_s, rss, peak, listed, v4, v6, ok = (m[k] for k in ("load_s", "rss", "peak", "listed", "v4", "v6", "ok"))
    lookups = results["RemoteClassifier.classify_column (columnar)"]
    trie = results["RemoteClassifier.classify (trie, old path)"]
    floor = results["dict.get (floor)"]
    naive = results["naive ipaddress scan"]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    section = "\n".join([
        START,
        "## cloud_prefix",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {cpu}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; `.venv/bin/python bench/cloud_prefix_bench.py`. One core (one thread); "
        f"times are this process's CPU time; load average {m['loadavg']:.2f} during the run (a busy machine "
        "still slows every rate alike through shared caches: compare the ratios to the dict floor).",
        "",
        f"Table: the real AWS, GCP, Azure and Oracle files in `shared/data/cloud-ranges`: {listed:,} listed "
        f"entries, {len(table):,} distinct prefixes ({v4:,} IPv4, {v6:,} IPv6): two pytricia tries (the old "
        "path, still used for one-address lookups) and, flattened from them with private space, disjoint "
        "128-bit ranges for the columnar path.",
        "Sample: 300k addresses, half inside IPv4 prefixes, a fifth inside IPv6 prefixes, the rest random IPv4.",
        "",
        "| measure | result | vs dict.get floor | target |",
        "|---|---|---|---|",
        f"| load (read + JSON + parse + precedence + tries) | {load_s:.2f} s CPU ({m['load_wall']:.2f} s wall) "
        f"| | <= {TARGET_LOAD:.0f} s |",
        f"| RSS added by the table and per-source state | {rss:.0f} MiB | | |",
        f"| classifier build (private space folded in, second pair of tries, range index) | "
        f"{m['classifier_s']:.2f} s CPU | | |",
        f"| RSS added by the classifier | {m['rss_classifier']:.0f} MiB | | |",
        *(f"| {name} | {r:,.0f} lookups/s ({1e6 / r:.3f} µs) | {r / floor:.2f}x | "
          f"{'>= 1,000,000/s' if name == 'RemoteClassifier.classify_column (columnar)' else ''} |"
          for name, r in results.items()),
        f"| processor `consume`, 10k-flow batches, 2k distinct remotes: columnar (Arrow batch in, Arrow batch "
        f"out) | {m['columnar_us']:.3f} µs per flow | | |",
        f"| the previous row-wise `consume` loop on the same flows as rows, address cache warm (same run) | "
        f"{m['rows_us']:.3f} µs per flow | | |",
        f"| peak RSS of the bench process | {peak:.0f} MiB | | |",
        "",
        f"The columnar path classifies {lookups / trie:.1f}x as many addresses per second as the trie path "
        f"(one pytricia lookup per address text) and {lookups / naive:,.0f}x as many as scanning every network "
        f"with `ipaddress`; its answers equal the trie's on {m['sample'] - m['disagree']:,}/{m['sample']:,} "
        f"sampled addresses. In the processor it costs {m['columnar_us']:.3f} µs per flow against "
        f"{m['rows_us']:.3f} µs for the previous row loop ({m['rows_us'] / m['columnar_us']:.1f}x), without "
        f"counting the row objects that loop needs (made upstream). Outcome: **{'PASS' if ok else 'FAIL'}**.",
        END,
    ])
    replace_section(START, END, section)


if __name__ == "__main__":
    sys.exit(main())
