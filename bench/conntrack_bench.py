#!/usr/bin/env python3
"""Benchmark of the conntrack receiver against ``conntrack -L``, on the same real table.

For each table size (default 10k, 100k, 300k UDP entries, built from real
packets between two namespaces: see ``bench/_table.py``):

* ``conntrack -L > /dev/null`` inside the table's namespace: CPU seconds (user
  + system, which includes the kernel's dump work) and wall time.
* dump + parse: one plain dump of the whole table through the receiver's hot
  path (layout check, key and counters, state lookup), table idle.
* full agent cycle with 1/3 of the entries active: dump, deltas, DESTROY
  events, building ``ConntrackRecord``s, and OTLP encode + gzip of the batch
  (``kubenetmon.otlp``), in the receiver's own ``cycle()``.
* the write-ahead checkpoint of that state (marshal + write to tmpfs).
* peak RSS of the process doing all that (one fresh process per size).

Each measurement is repeated (``--repeat``) and the median reported, with
the spread and the load average, so a noisy machine is visible. Needs root;
raises the global ``nf_conntrack_max`` for the run and restores it. Writes
its section of docs/benchmarks.md unless ``--no-doc``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import replace_section  # noqa: E402
from _table import ConntrackTable, raised_conntrack_max  # noqa: E402

from kubenetmon.netns import Namespace, NamespaceRegistry  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- benchmarks:conntrack:start -->", "<!-- benchmarks:conntrack:end -->"


# --- child: the receiver side, one process per table size ---------------------------


class EncodingConsumer:
    """Encodes every batch as the OTLP exporter would (requests of ≤ 20k points) and gzips it."""

    def __init__(self) -> None:
        try:
            from kubenetmon.otlp import encode_records_bytes
        except ImportError:  # pragma: no cover - the otlp package is another component
            encode_records_bytes = None  # type: ignore[assignment]
        self.encode = encode_records_bytes
        self.records = 0
        self.compressed = 0
        self.cpu = 0.0  # spent encoding and compressing

    def consume(self, batch: Any) -> None:
        self.records += len(batch.records)
        if self.encode is None:
            return
        started = time.process_time()
        for request in self.encode(batch.records, {"k8s.node.name": "bench-node"}, max_points=20_000):
            self.compressed += len(gzip.compress(request, compresslevel=6))
        self.cpu += time.process_time() - started


def _cpu() -> float:
    return time.process_time()


def _peak_mb() -> float:
    """Peak RSS so far (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(netns: str, repeat: int) -> None:
    """Measure the receiver in namespace ``netns``; talks to the parent over stdin/stdout."""
    from kubenetmon.receivers.conntrack import ConntrackConfig, _checkpoint, factory
    from kubenetmon.testing import create_component

    consumer = EncodingConsumer()
    config = ConntrackConfig(netns=netns, node_name="bench-node", skip_sanity_check=True, interval=3600)
    receiver = create_component(factory, config, consumer=consumer)
    receiver.open()
    tracker = receiver._tracker
    out: dict[str, Any] = {"otlp": consumer.encode is not None, "rss_open_mb": _peak_mb()}

    c, w = _cpu(), time.monotonic()
    receiver.cycle()  # baseline
    out["baseline"] = {"cpu": _cpu() - c, "wall": time.monotonic() - w, "entries": tracker.stats.entries}

    parse_cpu, parse_wall = [], []
    for _ in range(repeat):
        tracker.begin_dump(time.time_ns())
        c, w = _cpu(), time.monotonic()
        for buf in receiver._dump():
            tracker.feed(buf)
        parse_cpu.append(_cpu() - c)
        parse_wall.append(time.monotonic() - w)
        tracker.end_dump()
        entries = tracker.stats.entries
    out["parse"] = {"cpu": parse_cpu, "wall": parse_wall, "entries": entries}
    out["rss_parse_mb"] = _peak_mb()

    cycle_cpu, cycle_wall, records, encode_cpu = [], [], [], []
    checkpoint_cpu, checkpoint_bytes = [], 0
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        for _ in range(repeat):
            print("touch", flush=True)
            assert sys.stdin.readline().strip() == "go"
            before, encoding_before = consumer.records, consumer.cpu
            c, w = _cpu(), time.monotonic()
            receiver.cycle()
            cycle_cpu.append(_cpu() - c)
            encode_cpu.append(consumer.cpu - encoding_before)
            cycle_wall.append(time.monotonic() - w)
            records.append(consumer.records - before)
            c = _cpu()
            checkpoint_bytes = _checkpoint.save(
                Path(tmp) / "ct.state",
                _checkpoint.Checkpoint("bench-node", tracker.dump_ns, tracker.state, tracker.limbo, []),
            )
            checkpoint_cpu.append(_cpu() - c)
    out["cycle"] = {"cpu": cycle_cpu, "wall": cycle_wall, "records": records, "encode_cpu": encode_cpu}
    out["checkpoint"] = {"cpu": checkpoint_cpu, "bytes": checkpoint_bytes}
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    receiver._shutdown_done = True  # no last cycle
    receiver._stop.set()
    receiver._close_sockets()
    print("result " + json.dumps(out), flush=True)


# --- parent: tables, conntrack -L, orchestration ------------------------------------------


def conntrack_list(ns: Namespace) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``conntrack -L > /dev/null`` inside ``ns``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(
        ["ip", "netns", "exec", ns.name, "conntrack", "-L"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def measure(size: int, repeat: int) -> dict[str, Any]:
    with NamespaceRegistry("knmct") as reg:
        started = time.monotonic()
        table = ConntrackTable(reg, size)
        built = time.monotonic() - started
        count = table.count()
        cl = [conntrack_list(table.namespace) for _ in range(repeat)]
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", table.namespace.name, "--repeat", str(repeat)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert proc.stdin is not None and proc.stdout is not None
        result: dict[str, Any] = {}
        touched = 0
        for line in proc.stdout:
            if line.startswith("touch"):
                touched = table.touch(1 / 3, seed=len(line) + touched)
                proc.stdin.write("go\n")
                proc.stdin.flush()
            elif line.startswith("result "):
                result = json.loads(line[len("result ") :])
        if proc.wait() != 0 or not result:
            raise RuntimeError(f"benchmark child failed for {size} entries")
    result.update(size=size, count=count, built_s=built, touched=touched,
                  conntrack_cpu=[c for c, _ in cl], conntrack_wall=[w for _, w in cl])
    return result


def _noise(load_before: float) -> str:
    if load_before < 0.5:
        return "the machine was quiet when it started"
    if load_before < 1.5:
        return "other work was running: wall times are somewhat noisy, CPU seconds much less so"
    return "the machine was busy: wall times are noisy, CPU seconds less so (see the spreads)"


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _spread(values: list[float]) -> str:
    return f"{min(values):.3f}–{max(values):.3f}"


def report(results: list[dict[str, Any]], load: tuple[list[float], list[float]], repeat: int) -> str:
    now = dt.datetime.now(dt.UTC)
    otlp = all(r["otlp"] for r in results)
    lines = [
        START,
        "## conntrack receiver",
        "",
        f"Run: {now:%Y-%m-%d %H:%M} UTC, `.venv/bin/python bench/conntrack_bench.py` (as root), "
        f"{repeat} repetitions per number, medians (min–max in the detail table). Load average "
        f"before / after the run: {' '.join(f'{x:.2f}' for x in load[0])} / "
        f"{' '.join(f'{x:.2f}' for x in load[1])} on {os.cpu_count()} cores ({_noise(load[0][0])}; the "
        "run itself adds about 1).",
        "",
        "Tables are real UDP conntrack entries built from packets between two namespaces (`bench/_table.py`); "
        "`conntrack -L > /dev/null` runs inside the same namespace on the same table. CPU = user + system "
        "seconds of the process, so the kernel's work of producing the dump counts on both sides.",
        "",
        "| entries | `conntrack -L` CPU s | dump+parse CPU s | parse speed vs `conntrack -L` (≥ 0.9) "
        "| full cycle CPU s (1/3 active) | of which OTLP encode + gzip | full cycle / `conntrack -L` (≤ 2) "
        "| checkpoint CPU s | peak RSS MB (≤ 250 at 300k) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cl = _med(r["conntrack_cpu"])
        parse = _med(r["parse"]["cpu"])
        cycle = _med(r["cycle"]["cpu"])
        lines.append(
            f"| {r['count']:,} | {cl:.3f} | {parse:.3f} | {cl / parse:.2f}× | {cycle:.3f} "
            f"| {_med(r['cycle']['encode_cpu']):.3f} | {cycle / cl:.2f}× "
            f"| {_med(r['checkpoint']['cpu']):.3f} | {r['rss_mb']:.0f} |"
        )
    encoding = (
        "building the records and OTLP encode + gzip (level 6) of the batch"
        if otlp
        else "building the records (kubenetmon.otlp was not importable: no encoding)"
    )
    lines += [
        "",
        f"Full cycle = the receiver's `cycle()`: plain dump, user-space deltas, DESTROY-event drain, {encoding}; "
        "the checkpoint (write-ahead state file, needed only with `checkpoint_path`) is measured separately "
        "and adds to it when enabled.",
        "",
        "<details><summary>Detail (wall times, spreads, records)</summary>",
        "",
        "| entries | `conntrack -L` wall s | dump+parse wall s | entries/s (CPU) | full cycle wall s | records/cycle "
        "| checkpoint MB | baseline cycle CPU s | CPU spreads (-L / parse / cycle) | peak RSS MB: started / "
        "after idle dumps / after full cycles |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['count']:,} | {_med(r['conntrack_wall']):.3f} | {_med(r['parse']['wall']):.3f} "
            f"| {r['parse']['entries'] / _med(r['parse']['cpu']):,.0f} | {_med(r['cycle']['wall']):.3f} "
            f"| {int(_med(r['cycle']['records'])):,} | {r['checkpoint']['bytes'] / 1e6:.1f} "
            f"| {r['baseline']['cpu']:.3f} | {_spread(r['conntrack_cpu'])} / {_spread(r['parse']['cpu'])} / "
            f"{_spread(r['cycle']['cpu'])} | {r['rss_open_mb']:.0f} / {r['rss_parse_mb']:.0f} / {r['rss_mb']:.0f} |"
        )
    lines += [
        "",
        "</details>",
        "",
        "Reproduce: `sudo .venv/bin/python bench/conntrack_bench.py [--sizes 10000,100000,300000] [--repeat 3]`.",
        END,
    ]
    return "\n".join(lines)


def write_doc(section: str) -> None:
    replace_section(START, END, section)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,300000", help="comma-separated table sizes")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each measurement")
    parser.add_argument("--no-doc", action="store_true", help="print the section instead of writing the doc")
    parser.add_argument("--child", metavar="NETNS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeat)
        return 0
    if os.geteuid() != 0:
        print("conntrack_bench needs root (network namespaces, conntrack)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    load_before = list(os.getloadavg())
    results = []
    with raised_conntrack_max(max(sizes) + 50_000):
        for size in sizes:
            print(f"conntrack bench: {size:,} entries…", file=sys.stderr, flush=True)
            results.append(measure(size, args.repeat))
    section = report(results, (load_before, list(os.getloadavg())), args.repeat)
    if args.no_doc:
        print(section)
    else:
        write_doc(section)
        print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
