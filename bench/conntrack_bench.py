#!/usr/bin/env python3
"""Benchmark of the conntrack receiver and the node agent's whole path, against ``conntrack -L``.

For each table size (default 10k, 100k, 300k UDP entries with start
timestamps, built from real packets between two namespaces: see
``bench/_table.py``), in one run on the same table:

* ``conntrack -L > /dev/null`` inside the table's namespace: CPU seconds (user
  + system, which includes the kernel's work of producing the dump), the
  reference every other number is divided by.
* dump + parse: one plain dump through the receiver's parser, table idle.
* cycle, **all entries active** and **1 % active** (one more datagram on that
  fraction of the entries before each cycle): the receiver's ``cycle()`` with
  its write-ahead checkpoint on tmpfs (as the chart runs it), the batch
  handed to a consumer that drops it.
* full agent path, all active and 1 % active: the same ``cycle()`` handing its
  batch to the real ``otlp`` exporter configured as config/agent.yaml does
  (OTAP: Arrow batches with zstd on an ArrowMetrics stream; persistent sending
  queue on tmpfs; gRPC) sending to a local sink in another process, until the
  queue is empty. CPU of the whole agent process (all threads).
  ``KUBENETMON_BENCH_ARROW=0`` sends plain OTLP (gzip) instead (bench/otap_bench.py
  runs both).
* peak RSS: the receiver alone and the full agent path each run in a fresh
  process per table (the receiver's without the exporter's libraries).

Each measurement is repeated (``--repeat``) and the median reported, with
the spread and the load average. Needs root; raises the global
``nf_conntrack_max`` for the run and restores it. Writes its section of
docs/benchmarks.md unless ``--no-doc``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
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
FRACTIONS = (1.0, 0.01)
EXPORT_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"


class TimestampedTable(ConntrackTable):
    """The bench table with ``nf_conntrack_timestamp=1`` before its first entry, as on a node the agent
    runs on (it switches timestamps on at start): every entry carries its start time."""

    def _send(self, targets: list[tuple[str, int]]) -> None:
        self.namespace.set_sysctls({"net.netfilter.nf_conntrack_timestamp": 1})
        super()._send(targets)


# --- the local sink: answers Export, in its own process -----------------------------------


def sink() -> None:
    from concurrent import futures

    import grpc

    from kubenetmon.otap import BatchArrowRecords, BatchStatus

    def export(request: bytes, context: Any) -> bytes:
        return b""  # an empty ExportMetricsServiceResponse: everything accepted

    def arrow(requests: Any, context: Any) -> Any:  # OTAP (bench/otap_bench.py): an OK BatchStatus per BAR
        for data in requests:
            yield BatchStatus(batch_id=BatchArrowRecords.FromString(data).batch_id).SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        EXPORT_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)}
    )
    arrow_handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.experimental.arrow.v1.ArrowMetricsService",
        {"ArrowMetrics": grpc.stream_stream_rpc_method_handler(arrow)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.max_receive_message_length", 256 << 20)])
    server.add_generic_rpc_handlers((handler, arrow_handler))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


# --- child: the agent side, one process per table size ---------------------------------


class SwitchConsumer:
    """Hands batches to ``target`` (None: drops them), counting records."""

    def __init__(self) -> None:
        self.target: Any = None
        self.records = 0

    def consume(self, batch: Any) -> None:
        self.records += batch.num_records
        if self.target is not None:
            self.target.consume(batch)


def _peak_mb() -> float:
    """Peak RSS so far (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu() -> float:
    return time.process_time()  # every thread of the process


def _touch(fraction: float) -> None:
    print(f"touch {fraction}", flush=True)
    assert sys.stdin.readline().strip() == "go"


def child(netns: str, repeat: int, sink_port: int) -> None:
    """The receiver alone (``sink_port`` 0: parse, cycles) or the full agent path (the otlp exporter)."""
    from kubenetmon.receivers.conntrack import ConntrackConfig, factory
    from kubenetmon.testing import StaticHost, create_component

    tmp = tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
    consumer = SwitchConsumer()
    exporter: Any = None
    if sink_port:  # imported only here: the receiver's own numbers are measured without the exporter's libraries
        from kubenetmon.exporters.otlp import factory as otlp_factory
        from kubenetmon.exporters.otlp.config import OtlpExporterConfig

        exporter = create_component(otlp_factory, OtlpExporterConfig.model_validate({
            "endpoint": f"127.0.0.1:{sink_port}", "tls": {"insecure": True}, "compression": "gzip",
            "sending_queue": {"storage": "persistent", "directory": f"{tmp}/queue", "full_policy": "block"},
            "retry_on_failure": {"max_elapsed_time": 0}, "batch": {"max_wait": 0},
            # OTAP as config/agent.yaml; bench/otap_bench.py runs the same child with it off (=0) and on.
            "arrow": {"enabled": os.environ.get("KUBENETMON_BENCH_ARROW", "1") != "0"},
        }))
        exporter.start(StaticHost())
        consumer.target = exporter
    config = ConntrackConfig(
        netns=netns, node_name="bench-node", skip_sanity_check=True, interval=3600,
        checkpoint_path=f"{tmp}/conntrack.checkpoint",
    )
    receiver = create_component(factory, config, consumer=consumer)
    receiver.open()
    tracker = receiver._tracker
    out: dict[str, Any] = {"rss_open_mb": _peak_mb()}

    c, w = _cpu(), time.monotonic()
    receiver.cycle()  # baseline
    out["baseline"] = {"cpu": _cpu() - c, "wall": time.monotonic() - w, "entries": tracker.stats.entries}

    def drain() -> None:
        deadline = time.monotonic() + 300
        while exporter is not None and exporter._queue is not None and exporter._queue.size():
            if time.monotonic() > deadline:
                raise RuntimeError("the exporter did not empty its queue in 300 s")
            time.sleep(0.002)

    def run_cycles(fraction: float) -> dict[str, Any]:
        cpu, wall, records = [], [], []
        for _ in range(repeat):
            _touch(fraction)
            before = consumer.records
            c, w = _cpu(), time.monotonic()
            receiver.cycle()
            drain()
            cpu.append(_cpu() - c)
            wall.append(time.monotonic() - w)
            records.append(consumer.records - before)
        return {"cpu": cpu, "wall": wall, "records": records}

    if exporter is None:
        parse_cpu = []
        for _ in range(repeat):
            tracker.begin_dump(time.time_ns())
            c = _cpu()
            for buf in receiver._dump():
                tracker.feed(buf)
            tracker.end_dump()
            parse_cpu.append(_cpu() - c)
        out["parse"] = {"cpu": parse_cpu, "entries": tracker.stats.entries}
        out["rss_parse_mb"] = _peak_mb()
    out["cycles"] = {str(f): run_cycles(f) for f in FRACTIONS}
    out["checkpoint_bytes"] = receiver._m_checkpoint_bytes.value()
    if exporter is not None:
        out["otlp_bytes"] = exporter.m_bytes.value() if hasattr(exporter, "m_bytes") else 0
        out["otlp_requests"] = exporter.m_requests.value(outcome="ok") if hasattr(exporter, "m_requests") else 0
        if hasattr(exporter, "m_bars"):
            out["otap_bars"] = exporter.m_bars.value(outcome="ok")
            out["otap_bytes"] = exporter.m_bar_bytes.value()
        exporter.shutdown(30)
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    receiver._shutdown_done = True  # no last cycle
    receiver._stop.set()
    receiver._close_sockets()
    shutil.rmtree(tmp, ignore_errors=True)  # tmpfs: the checkpoint and queue would hold memory
    print("result " + json.dumps(out), flush=True)


# --- parent: tables, conntrack -L, orchestration ------------------------------------------


def conntrack_list(ns: Namespace) -> float:
    """CPU seconds of ``conntrack -L > /dev/null`` inside ``ns``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        ["ip", "netns", "exec", ns.name, "conntrack", "-L"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _run_child(table: TimestampedTable, repeat: int, sink_port: int, reference: list[float]) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", table.namespace.name, "--repeat", str(repeat),
         "--sink-port", str(sink_port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    result: dict[str, Any] = {}
    for line in proc.stdout:
        if line.startswith("touch "):
            table.touch(float(line.split()[1]), seed=len(reference))
            reference.append(conntrack_list(table.namespace))  # interleaved with the cycles
            proc.stdin.write("go\n")
            proc.stdin.flush()
        elif line.startswith("result "):
            result = json.loads(line[len("result ") :])
    if proc.wait() != 0 or not result:
        raise RuntimeError(f"benchmark child failed for {table.entries} entries")
    return result


def measure(size: int, repeat: int, sink_port: int) -> dict[str, Any]:
    with NamespaceRegistry("knmct") as reg:
        table = TimestampedTable(reg, size)
        count = table.count()
        reference = [conntrack_list(table.namespace) for _ in range(repeat)]
        receiver = _run_child(table, repeat, 0, reference)
        full = _run_child(table, repeat, sink_port, reference)
    return {"size": size, "count": count, "conntrack_cpu": reference, "receiver": receiver, "full": full}


def _noise(load_before: float) -> str:
    if load_before < 0.5:
        return "the machine was quiet when it started"
    if load_before < 1.5:
        return "other work was running: CPU seconds are somewhat noisy"
    return "the machine was busy: CPU seconds are noisy (see the spreads; ratios are within one run)"


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _spread(values: list[float]) -> str:
    return f"{min(values):.3f}–{max(values):.3f}"


def _mb(value: float) -> str:
    return f"{value:.0f}{' ✗' if value > 250 else ''}"


def _ratio(value: float, target: float) -> str:
    return f"{value:.2f}× {'✓' if value <= target else '✗'}"


def report(results: list[dict[str, Any]], load: tuple[list[float], list[float]], repeat: int) -> str:
    now = dt.datetime.now(dt.UTC)
    lines = [
        START,
        "## conntrack receiver and node agent",
        "",
        f"Run: {now:%Y-%m-%d %H:%M} UTC, `.venv/bin/python bench/conntrack_bench.py` (as root), "
        f"{repeat} repetitions per number, medians (spreads in the detail table). Load average "
        f"before / after: {' '.join(f'{x:.2f}' for x in load[0])} / "
        f"{' '.join(f'{x:.2f}' for x in load[1])} on {os.cpu_count()} cores ({_noise(load[0][0])}).",
        "",
        "Tables are real UDP conntrack entries with start timestamps, built from packets between two namespaces "
        "(`bench/_table.py`); `conntrack -L > /dev/null` runs inside the same namespace on the same table, "
        "interleaved with the agent's cycles. CPU = user + system seconds, so the kernel's work of producing "
        "the dump counts on both sides. *Cycle* = the receiver's `cycle()` (dump, columnar deltas, DESTROY "
        "events, Arrow record batch, write-ahead checkpoint on tmpfs). *Full path* = the same cycle handing its "
        "batch to the `otlp` exporter of the tree configured as config/agent.yaml (OTAP: Arrow + zstd on an "
        "ArrowMetrics stream; persistent queue on tmpfs; gRPC) "
        "sending to a local sink in another process, until the queue is empty; CPU of the whole agent process "
        "(another process than the receiver's, so its RSS includes the exporter's libraries and encoding). "
        "Targets (issue 12): full path all active ≤ 1.5×, 1 % active ≤ 1.1×, peak RSS ≤ 250 MB at 300k.",
        "",
        "| entries | `conntrack -L` CPU s | dump+parse | cycle, all active | cycle, 1 % active "
        "| full path, all active (≤ 1.5×) | full path, 1 % active (≤ 1.1×) | peak RSS MB: receiver / full path "
        "(≤ 250) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cl = _med(r["conntrack_cpu"])

        def cell(values: list[float], target: float | None = None, cl: float = cl) -> str:
            ratio = _med(values) / cl
            shown = _ratio(ratio, target) if target else f"{ratio:.2f}×"
            return f"{_med(values):.3f} s = {shown}"

        rec, full = r["receiver"], r["full"]
        lines.append(
            f"| {r['count']:,} | {cl:.3f} | {cell(rec['parse']['cpu'])} | {cell(rec['cycles']['1.0']['cpu'])} "
            f"| {cell(rec['cycles']['0.01']['cpu'])} | {cell(full['cycles']['1.0']['cpu'], 1.5)} "
            f"| {cell(full['cycles']['0.01']['cpu'], 1.1)} | {_mb(rec['rss_mb'])} / {_mb(full['rss_mb'])} |"
        )
    lines += [
        "",
        "<details><summary>Detail (spreads, records, wall times, memory by stage)</summary>",
        "",
        "| entries | `conntrack -L` CPU spread | records per cycle (all / 1 %) | cycle CPU spread (all / 1 %) "
        "| full path CPU spread (all / 1 %) | cycle / full path wall s, all active | sent: OTAP BARs, MB "
        "| checkpoint MB | receiver RSS MB: opened / idle dumps / cycles | full path RSS MB: "
        "opened / end |",
        "|---:|---|---|---|---|---|---|---:|---|---|",
    ]
    for r in results:
        rec, full = r["receiver"], r["full"]
        cyc, fc = rec["cycles"], full["cycles"]
        lines.append(
            f"| {r['count']:,} | {_spread(r['conntrack_cpu'])} "
            f"| {int(_med(cyc['1.0']['records'])):,} / {int(_med(cyc['0.01']['records'])):,} "
            f"| {_spread(cyc['1.0']['cpu'])} / {_spread(cyc['0.01']['cpu'])} "
            f"| {_spread(fc['1.0']['cpu'])} / {_spread(fc['0.01']['cpu'])} "
            f"| {_med(cyc['1.0']['wall']):.3f} / {_med(fc['1.0']['wall']):.3f} "
            f"| {int(full.get('otap_bars', 0)):,}, {full.get('otap_bytes', 0) / 1e6:.1f} "
            f"| {rec['checkpoint_bytes'] / 1e6:.1f} "
            f"| {rec['rss_open_mb']:.0f} / {rec['rss_parse_mb']:.0f} / {rec['rss_mb']:.0f} "
            f"| {full['rss_open_mb']:.0f} / {full['rss_mb']:.0f} |"
        )
    lines += [
        "",
        "</details>",
        "",
        "Reproduce: `sudo .venv/bin/python bench/conntrack_bench.py [--sizes 10000,100000,300000] [--repeat 3]`.",
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,300000", help="comma-separated table sizes")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each measurement")
    parser.add_argument("--no-doc", action="store_true", help="print the section instead of writing the doc")
    parser.add_argument("--child", metavar="NETNS", help=argparse.SUPPRESS)
    parser.add_argument("--sink-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        sink()
        return 0
    if args.child:
        child(args.child, args.repeat, args.sink_port)
        return 0
    if os.geteuid() != 0:
        print("conntrack_bench needs root (network namespaces, conntrack)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    load_before = list(os.getloadavg())
    results = []
    sink_proc = subprocess.Popen([sys.executable, __file__, "--sink"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert sink_proc.stdout is not None
        sink_port = int(sink_proc.stdout.readline())
        with raised_conntrack_max(max(sizes) + 50_000):
            for size in sizes:
                print(f"conntrack bench: {size:,} entries…", file=sys.stderr, flush=True)
                results.append(measure(size, args.repeat, sink_port))
    finally:
        sink_proc.terminate()
        sink_proc.wait(10)
    section = report(results, (load_before, list(os.getloadavg())), args.repeat)
    if not args.no_doc:
        replace_section(START, END, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
