#!/usr/bin/env python3
"""otap: OTAP (OpenTelemetry Protocol with Apache Arrow) against plain OTLP, in the same run.

**Codec** (each size in its own child process pinned to one core, CPU time,
best of a few runs; the records of ``bench/otlp_bench.py``: half IPv6, a
third DNAT'd, a seventh without reply traffic):

* bytes per record on the wire: OTLP raw and gzip (level 6, gRPC's gzip)
  vs OTAP BARs with zstd IPC buffers, *cold* (a new stream: schemas and every
  address in the dictionary) and *warm* (the same connections' next interval
  on the same stream: dictionary deltas are empty);
* agent encode µs per record: ``encode_record_table_bytes`` + gzip (what the
  exporter and gRPC do) vs ``RecordsProducer.encode`` (zstd included);
* gateway decode µs per record: ``decode_records_bytes`` (gRPC's gunzip not
  counted) vs ``RecordsConsumer.decode`` of the BAR bytes;
* both decoders must return the same records (checked).

**Agent full path** (as root; ``--no-agent`` skips it): ``bench/conntrack_bench.py``'s
full-path child (conntrack cycle → otlp exporter with persistent queue →
gRPC to a local sink) with OTLP and with ``arrow.enabled``, on the same real
conntrack tables, interleaved with ``conntrack -L`` on them: CPU ratios.

Writes its section of docs/benchmarks.md (``--no-doc`` to skip).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import gzip
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import replace_section  # noqa: E402
from otlp_bench import MAX_POINTS, best, clear_caches, make_records  # noqa: E402

from kubenetmon.flows import FlowBatch  # noqa: E402
from kubenetmon.otap import BatchArrowRecords, RecordsConsumer, RecordsProducer  # noqa: E402
from kubenetmon.otlp import decode_records_bytes, encode_record_table_bytes  # noqa: E402

START, END = "<!-- benchmarks:otap:start -->", "<!-- benchmarks:otap:end -->"
MAX_POINTS_PER_BAR = 65536  # the exporter's default arrow.max_points_per_bar
T0 = 1_700_000_000_000_000_000
NOW = T0 + 10 * 10**9


def bar_parts(table: Any) -> list[Any]:
    """The exporter's split of a block into BARs (``OtlpExporter._bar_parts``)."""
    import numpy as np
    import pyarrow.compute as pc

    points = sum(pc.not_equal(table.column(n), 0).to_numpy(zero_copy_only=False).astype(np.int64)
                 for n in ("original_bytes", "original_packets", "reply_bytes", "reply_packets"))
    part = np.maximum(np.cumsum(points) - 1, 0) // MAX_POINTS_PER_BAR
    edges = [0, *(np.flatnonzero(np.diff(part)) + 1).tolist(), table.num_rows]
    return [table.slice(a, b - a) for a, b in itertools.pairwise(edges)]


def otap_stream(parts: list[Any], compression: str | None = "zstd") -> tuple[list[bytes], list[bytes]]:
    """The BARs of a block on a new stream (cold) and of the same connections' next block (warm)."""
    producer = RecordsProducer(compression)
    cold = [producer.encode(p, {}, {"kubenetmon-batch-id": f"c{i}"}) for i, p in enumerate(parts)]
    warm = [producer.encode(p, {}, {"kubenetmon-batch-id": f"w{i}"}) for i, p in enumerate(parts)]
    return cold, warm


def decode_all(consumer: RecordsConsumer, bars: list[bytes]) -> list[Any]:
    out = []
    for data in bars:
        bar = BatchArrowRecords.FromString(data)
        consumer.headers(bar)
        out.append(consumer.decode(bar, NOW))
    return out


def child(n: int) -> dict[str, Any]:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    repeat = 5 if n <= 20_000 else 3
    table = FlowBatch(records=make_records(n)).record_table()
    parts = bar_parts(table)
    requests = encode_record_table_bytes(table, {}, max_points=MAX_POINTS)
    cold, warm = otap_stream(parts)
    raw_cold, _ = otap_stream(parts, None)

    # Same records both ways (order aside).
    consumer = RecordsConsumer()
    via_otap = [r for res in decode_all(consumer, cold) for r in res.records]
    via_otlp = [r for data in requests for r in decode_records_bytes(data, now_ns=NOW).records]
    key = lambda r: (r.src, r.sport, r.dst, r.dport, r.transport)  # noqa: E731
    assert sorted(via_otap, key=key) == sorted(via_otlp, key=key) and len(via_otap) == n, "OTAP != OTLP"
    del via_otap, via_otlp
    gc.collect()
    gc.freeze()

    def warm_decode() -> Any:
        stream = RecordsConsumer()
        decode_all(stream, cold)  # the stream's first block: its schemas and dictionary
        return stream

    warm_consumers: list[RecordsConsumer] = []
    warm_producers: list[RecordsProducer] = []

    def cold_producer() -> RecordsProducer:
        producer = RecordsProducer()
        for p in parts:
            producer.encode(p, {}, {})  # the stream's first block: its schemas and dictionary
        return producer

    t: dict[str, float] = {
        "otlp encode + gzip cold": best(lambda: [gzip.compress(r, 6) for r in encode_record_table_bytes(
            table, {}, max_points=MAX_POINTS)], repeat, clear_caches),
        "otlp encode warm": best(lambda: encode_record_table_bytes(table, {}, max_points=MAX_POINTS), repeat),
        "otlp encode + gzip warm": best(lambda: [gzip.compress(r, 6) for r in encode_record_table_bytes(
            table, {}, max_points=MAX_POINTS)], repeat),
        "otlp decode cold": best(lambda: [decode_records_bytes(r, now_ns=NOW) for r in requests], repeat,
                                 clear_caches),
        "otlp decode warm": best(lambda: [decode_records_bytes(r, now_ns=NOW) for r in requests], repeat),
        "otap encode cold": best(lambda: [RecordsProducer().encode(p, {}, {}) for p in parts], repeat),
        "otap encode warm": best(lambda: [warm_producers[-1].encode(p, {}, {}) for p in parts], repeat,
                                 lambda: warm_producers.append(cold_producer())),
        "otap decode cold": best(lambda: decode_all(RecordsConsumer(), cold), repeat),
        "otap decode warm": best(lambda: decode_all(warm_consumers.pop(), warm), repeat,
                                 lambda: warm_consumers.append(warm_decode())),
    }
    gzipped = sum(len(gzip.compress(r, 6)) for r in requests)
    return {
        "records": n, "bars": len(parts), "requests": len(requests), "cpu": t,
        "bytes": {"otlp raw": sum(map(len, requests)) / n, "otlp gzip": gzipped / n,
                  "otap cold (no compression)": sum(map(len, raw_cold)) / n,
                  "otap cold": sum(map(len, cold)) / n, "otap warm": sum(map(len, warm)) / n},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(n: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


PAIRS = (
    ("agent encode, new connections", "otlp encode + gzip cold", "otap encode cold"),
    ("agent encode, the same connections again", "otlp encode + gzip warm", "otap encode warm"),
    ("gateway decode, new connections", "otlp decode cold", "otap decode cold"),
    ("gateway decode, the same connections again", "otlp decode warm", "otap decode warm"),
)


def codec_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| µs per record (CPU, one core) | " + " | ".join(f"{r['records']:,}: OTLP / OTAP / ratio" for r in results)
        + " |",
        "|---|" + "---|" * len(results),
    ]
    for label, a, b in PAIRS:
        cells = []
        for r in results:
            x, y = 1e6 * r["cpu"][a] / r["records"], 1e6 * r["cpu"][b] / r["records"]
            cells.append(f"{x:.2f} / {y:.2f} / {y / x:.2f}x")
        lines.append(f"| {label} (`{a}` vs `{b}`) | " + " | ".join(cells) + " |")
    lines += ["", "| bytes per record on the wire | " + " | ".join(f"{r['records']:,}" for r in results) + " |",
              "|---|" + "---|" * len(results)]
    for name in results[0]["bytes"]:
        lines.append(f"| {name} | " + " | ".join(f"{r['bytes'][name]:.1f}" for r in results) + " |")
    lines.append("| BARs / OTLP requests | " + " | ".join(f"{r['bars']} / {r['requests']}" for r in results) + " |")
    lines.append("| peak RSS of the child | " + " | ".join(f"{r['peak_rss_mib']:.0f} MiB" for r in results) + " |")
    return lines


# --- the agent's full path (root) ----------------------------------------------------------


def agent(sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    import conntrack_bench as cb

    out = []
    sink = subprocess.Popen([sys.executable, cb.__file__, "--sink"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        with cb.raised_conntrack_max(max(sizes) + 50_000):
            for size in sizes:
                print(f"otap bench: agent full path, {size:,} entries…", file=sys.stderr, flush=True)
                with cb.NamespaceRegistry("knmotap") as reg:
                    out.append(agent_table(cb, reg, size, repeat, port))
    finally:
        sink.terminate()
        sink.wait(10)
    return out


def agent_table(cb: Any, reg: Any, size: int, repeat: int, port: int) -> dict[str, Any]:
    """One table: ``conntrack -L``, then the full-path child with OTLP and with OTAP, interleaved."""
    table = cb.TimestampedTable(reg, size)
    reference = [cb.conntrack_list(table.namespace) for _ in range(repeat)]
    runs = {}
    for mode in ("otlp", "otap"):
        os.environ["KUBENETMON_BENCH_ARROW"] = "1" if mode == "otap" else "0"
        runs[mode] = cb._run_child(table, repeat, port, reference)
    os.environ.pop("KUBENETMON_BENCH_ARROW", None)
    return {"size": size, "conntrack_cpu": reference, **runs}


def agent_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| entries | `conntrack -L` CPU s (median) | full path all active: OTLP / OTAP (× `conntrack -L`, ≤ 1.5) "
        "| 1 % active: OTLP / OTAP (≤ 1.1) | bytes sent per record: OTLP before gzip / OTAP | peak RSS "
        "MB: OTLP / OTAP |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cl = statistics.median(r["conntrack_cpu"])

        def ratio(mode: str, fraction: str, cl: float = cl, r: dict[str, Any] = r) -> str:
            return f"{statistics.median(r[mode]['cycles'][fraction]['cpu']) / cl:.2f}×"

        def per_record(mode: str, key: str, r: dict[str, Any] = r) -> float:
            sent = sum(sum(c["records"]) for c in r[mode]["cycles"].values())
            return float(r[mode].get(key, 0)) / max(sent, 1)

        lines.append(
            f"| {r['size']:,} | {cl:.3f} | {ratio('otlp', '1.0')} / {ratio('otap', '1.0')} "
            f"| {ratio('otlp', '0.01')} / {ratio('otap', '0.01')} "
            f"| {per_record('otlp', 'otlp_bytes'):.0f} / {per_record('otap', 'otap_bytes'):.1f} "
            f"| {r['otlp']['rss_mb']:.0f} / {r['otap']['rss_mb']:.0f} |"
        )
    return lines


NOTE_DICTIONARY = (
    "At 100,000 records this mix has more distinct addresses (about 100k) than a stream's UInt16 string "
    "dictionary holds (65,535): the producer restarts the dictionary and *warm* costs what *cold* does. A "
    "node's real table repeats addresses far more (see the bytes per record of the agent full path)."
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="codec: comma-separated record counts")
    parser.add_argument("--agent", metavar="SIZES", default="10000,100000,300000",
                        help="agent full path on conntrack tables of these sizes (needs root; default %(default)s)")
    parser.add_argument("--no-agent", action="store_true", help="the codec only (what runs without root)")
    parser.add_argument("--repeat", type=int, default=3, help="agent full path: cycles per measurement")
    parser.add_argument("--no-doc", action="store_true", help="print the section instead of writing the doc")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    load = os.getloadavg()
    results = [run_child(int(s)) for s in args.sizes.split(",")]
    if not args.no_agent and os.geteuid() != 0:
        print("otap bench: the agent full path needs root (namespaces, conntrack): codec only", file=sys.stderr)
        args.no_agent = True
    agents = [] if args.no_agent else agent([int(s) for s in args.agent.split(",")], args.repeat)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    lines = [
        START,
        "## otap (OTAP vs OTLP, agent → gateway)",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {cpu}, {os.cpu_count()} cores, load average "
        f"{load[0]:.2f} before; `.venv/bin/python bench/otap_bench.py` (as root)"
        ". Codec: each size in its own process pinned to one core, CPU time, best of 3–5 runs; OTLP and OTAP "
        "in the same child. *Cold*: a new stream / empty decoder caches (every connection new); *warm*: the "
        "same connections' next interval (OTAP: same stream, schema and strings known; OTLP: the encoder's "
        "block cache and the decoder's tuple cache hit). OTLP encode includes gzip level 6 when warm (what "
        "gRPC adds); OTAP encode includes zstd of the IPC buffers; decode excludes gRPC's gunzip.",
        "",
        *codec_lines(results),
        "",
        NOTE_DICTIONARY,
    ]
    if agents:
        lines += [
            "",
            "Agent full path (`bench/conntrack_bench.py`'s full-path child: cycle → otlp exporter with "
            "persistent queue on tmpfs → gRPC to a local sink that acknowledges without decoding), OTLP and "
            "OTAP on the same real conntrack tables, medians of the CPU ratios to `conntrack -L` run "
            "interleaved on the same table:",
            "",
            *agent_lines(agents),
        ]
    lines.append(END)
    section = "\n".join(lines)
    if not args.no_doc:
        replace_section(START, END, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
