#!/usr/bin/env python3
"""clickhouse exporter: rows/s into chDB against a bare insert of the same rows, and CPU per stage.

In one process, on one chDB path, alternating runs (best of ``--repeat``):

* **exporter**: ``consume`` of flow tables (Arrow, as a converted pipeline hands
  them on) → sending queue (memory) → one block per batch → columnar mapping
  → ``client.insert_arrow`` with the block's ``insert_deduplication_token``;
  pre-aggregation off (every flow has its own key, as on a busy gateway where
  aggregation finds nothing to merge). The clock runs from the first
  ``consume`` until the last block is acknowledged.
* **bare insert_arrow (reference)**: the same rows, already mapped (the
  mapping is not counted), handed to ``client.insert_arrow`` with a fresh
  ``insert_deduplication_token`` each (as the exporter sends; without one the
  table's deduplication window hashes every block's data, which made a bare
  insert ~2× slower than the exporter in a first run).
* **bare Native insert**: the same rows as Python columns, already built,
  handed to ``client.insert(column_oriented=True)`` with the column types —
  the cheapest way to call clickhouse-connect's Native path. Compared with the
  line above, it decides which insert path the exporter uses.

Then, on the same data in the same run, CPU per input record of each stage
(``time.thread_time`` of the calling thread, ``time.process_time`` for the
whole process, whose difference is chDB's own insert threads): mapping and
aggregation (with distinct keys, and with realistic traffic where each
connection reports 12 intervals a minute), Arrow serialisation, the engine's
insert, the Native insert for comparison, and cyclic GC during the exporter
runs. Batches of 10k and 100k rows. Target: exporter ≥ 0.8 × bare
insert_arrow. Writes its section of docs/benchmarks.md (``--no-doc`` to skip).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
from _report import replace_section  # noqa: E402
from clickhouse_connect.driver.query import arrow_buffer  # noqa: E402

from kubenetmon.component import Kind  # noqa: E402
from kubenetmon.exporters.clickhouse import ClickHouseConfig, ClickHouseExporter  # noqa: E402
from kubenetmon.exporters.clickhouse.connection import connect  # noqa: E402
from kubenetmon.exporters.clickhouse.rows import COLUMN_NAMES, COLUMN_TYPES, PreparedRows, RowMapper  # noqa: E402
from kubenetmon.exporters.clickhouse.schema import create_table  # noqa: E402
from kubenetmon.flows import Endpoint, Flow, FlowBatch  # noqa: E402
from kubenetmon.identity import Identity  # noqa: E402
from kubenetmon.testing import StaticHost, create_settings  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- benchmarks:clickhouse:start -->", "<!-- benchmarks:clickhouse:end -->"
TARGET = 0.8
IDENTITY = Identity(cloud="aws", region="us-west-2", cluster="prod-1", environment="production")
MINUTE_NS = 60_000_000_000


def make_flows(n: int, seed: int = 0, intervals: int = 1) -> list[Flow]:
    """``n`` flows: ``n // intervals`` distinct connections (2k pods, 500 apps, realistic label lengths),
    each reporting ``intervals`` 5-second intervals of one minute."""
    minute = (int(time.time()) // 60 * 60 - 3600) * 1_000_000_000
    flows = []
    for i in range(n):
        c, k = divmod(i, intervals)
        p, q = (c + seed) % 2000, (c * 7 + seed) % 2000
        local = Endpoint(
            address=f"10.{p >> 8 & 255}.{p & 255}.{c % 7 + 1}", port=8080 + c % 5,
            pod=f"api-{p % 500}-7f9c8d6b5-x{p:04d}",
            namespace=f"team-{p % 40}", node=f"ip-10-0-{p % 64}-{p % 200}.us-west-2.compute.internal",
            app=f"service-{p % 500}", instance_id=f"i-0{p:016x}", availability_zone=f"us-west-2{'abc'[p % 3]}",
        )
        remote = Endpoint(
            address=f"10.{q >> 8 & 255}.{q & 255}.{c % 11 + 1}", port=30000 + c % 30000,
            pod=f"web-{q % 500}-5d4c-y{q:04d}",
            namespace=f"team-{q % 40}", node=f"ip-10-1-{q % 64}-{q % 200}.us-west-2.compute.internal",
            app=f"frontend-{q % 500}", availability_zone=f"us-west-2{'abc'[q % 3]}", cloud="aws", region="us-west-2",
        )
        end = minute + (k % 12 + 1) * 5_000_000_000
        flows.append(Flow(
            "out" if c % 2 else "in", "tcp", "ipv4", local, remote, 1000 + i, 1 + i % 50,
            "INTRA_VPC", {"NAT_GATEWAY": True} if c % 10 == 0 else {}, "node", end - 5_000_000_000, end,
        ))
    return flows


def tables(flows: list[Flow], size: int) -> list[pa.RecordBatch]:
    return [FlowBatch(flows=flows[i:i + size]).flow_table() for i in range(0, len(flows), size)]


def native_columns(prepared: PreparedRows) -> list[list[Any]]:
    """The prepared rows as the Python columns clickhouse-connect's Native insert takes."""
    rows = prepared.to_rows()
    return [[r[name] for r in rows] for name in COLUMN_NAMES]


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssSampler:
    """Highest RSS seen while running, above the RSS at the start."""

    def __init__(self) -> None:
        self.base = rss_mib()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mib())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak - self.base


class GcTimer:
    """Time spent in cyclic garbage collections while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections += 1

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def exporter_run(
    dsn: str, batches: list[pa.RecordBatch], aggregate: bool = False, memory: dict[str, float] | None = None,
    gc_timer: GcTimer | None = None,
) -> float:
    config = ClickHouseConfig.model_validate({
        "endpoint": dsn, "aggregate": aggregate,
        "batch": {"max_wait": 0, "max_flows": max(b.num_rows for b in batches)},
        "sending_queue": {"capacity": len(batches) + 1},
    })
    exporter = ClickHouseExporter(create_settings(Kind.EXPORTER, "clickhouse", identity=IDENTITY), config)
    exporter.start(StaticHost())
    gc.collect()
    sampler = RssSampler()
    timer = gc_timer or GcTimer()
    with timer:
        started = time.perf_counter()
        for b in batches:
            exporter.consume(FlowBatch(flows=b))
        while exporter.m_blocks.value() < len(batches):
            time.sleep(0.001)
        took = time.perf_counter() - started
    added = sampler.stop()
    if memory is not None:
        memory["exporter"] = max(memory.get("exporter", 0.0), added)
    flows = exporter.m_sent.value()
    exporter.shutdown(30)
    assert flows == sum(b.num_rows for b in batches), (flows, sum(b.num_rows for b in batches))
    return flows / took


def token() -> dict[str, str]:
    """A fresh insert_deduplication_token, as the exporter sends (without one, a table with a
    deduplication window hashes every block's data instead)."""
    return {"insert_deduplication_token": uuid.uuid4().hex}


def arrow_run(client: Any, prepared: list[PreparedRows]) -> float:
    rows = 0
    gc.collect()
    started = time.perf_counter()
    for p in prepared:
        client.insert_arrow("reference_flows", p.table, database="default", settings=token())
        rows += p.rows
    return rows / (time.perf_counter() - started)


def native_run(client: Any, chunks: list[list[list[Any]]]) -> float:
    rows = 0
    gc.collect()
    started = time.perf_counter()
    for data in chunks:
        client.insert("reference_flows", data, database="default", column_names=list(COLUMN_NAMES),
                      column_type_names=list(COLUMN_TYPES), column_oriented=True, settings=token())
        rows += len(data[0])
    return rows / (time.perf_counter() - started)


def truncate(client: Any) -> None:
    client.command("TRUNCATE TABLE IF EXISTS default.network_flows_0")
    client.command("TRUNCATE TABLE IF EXISTS default.reference_flows")


def cpu(work: Callable[[], object], records: int, repeat: int) -> tuple[float, float]:
    """(calling thread, whole process) CPU µs per record of ``work``, best of ``repeat``."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        gc.collect()
        t0, p0 = time.thread_time(), time.process_time()
        work()
        t, p = time.thread_time() - t0, time.process_time() - p0
        if p < best[1]:
            best = (t, p)
    return best[0] / records * 1e6, best[1] / records * 1e6


def stages(client: Any, rows: int, size: int, repeat: int) -> dict[str, tuple[float, float]]:
    """CPU µs per input record of each stage, on ``rows`` flows in ``size``-row batches."""
    distinct = tables(make_flows(rows), size)
    minute = tables(make_flows(rows, intervals=12), size)
    mapper = RowMapper(IDENTITY, aggregate=False)
    aggregating = RowMapper(IDENTITY)
    out: dict[str, tuple[float, float]] = {}
    out["mapping, aggregation off (distinct keys)"] = cpu(lambda: [mapper.prepare(t) for t in distinct], rows, repeat)
    out["mapping + aggregation (12 intervals/connection)"] = cpu(
        lambda: [aggregating.prepare(t) for t in minute], rows, repeat)
    prepared = [mapper.prepare(t) for t in distinct]
    out["Arrow serialisation (insert_arrow's IPC)"] = cpu(
        lambda: [arrow_buffer(p.table) for p in prepared], rows, repeat)

    def insert_arrow() -> None:
        truncate(client)
        for p in prepared:
            client.insert_arrow("reference_flows", p.table, database="default", settings=token())

    out["insert_arrow into chDB (serialisation + engine)"] = cpu(insert_arrow, rows, repeat)
    columns = [native_columns(p) for p in prepared]

    def insert_native() -> None:
        truncate(client)
        for data in columns:
            client.insert("reference_flows", data, database="default", column_names=list(COLUMN_NAMES),
                          column_type_names=list(COLUMN_TYPES), column_oriented=True, settings=token())

    out["Native insert into chDB (serialisation + engine; Python columns not counted)"] = cpu(
        insert_native, rows, repeat)
    aggregated = [aggregating.prepare(t) for t in minute]

    def insert_aggregated() -> None:
        truncate(client)
        for p in aggregated:
            client.insert_arrow("reference_flows", p.table, database="default", settings=token())

    out["insert_arrow of the aggregated rows (12 intervals/connection)"] = cpu(insert_aggregated, rows, repeat)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="rows per run (per batch size)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side; the best counts")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="knm-ch-bench-"))
    dsn = f"chdb://{workdir / 'chdb'}"
    conn = connect(ClickHouseConfig(endpoint=dsn))
    load_before = os.getloadavg()[0]
    try:
        create_table(conn.client, "default", "network_flows_0", 1000)
        create_table(conn.client, "default", "reference_flows", 1000)
        results: dict[int, dict[str, float]] = {}
        memory: dict[int, dict[str, float]] = {}
        gc_timers: dict[int, GcTimer] = {}
        for size in (10_000, 100_000):
            batches = tables(make_flows(args.rows), size)
            mapper = RowMapper(IDENTITY, aggregate=False)
            prepared = [mapper.prepare(b) for b in batches]
            columns = [native_columns(p) for p in prepared]
            memory[size] = {}
            gc_timers[size] = GcTimer()
            best = {"exporter": 0.0, "bare insert_arrow": 0.0, "bare Native insert": 0.0,
                    "exporter, aggregation on": 0.0}
            for _ in range(args.repeat):
                truncate(conn.client)
                best["bare insert_arrow"] = max(best["bare insert_arrow"], arrow_run(conn.client, prepared))
                truncate(conn.client)
                best["exporter"] = max(best["exporter"], exporter_run(dsn, batches, memory=memory[size],
                                                                      gc_timer=gc_timers[size]))
                truncate(conn.client)
                best["bare Native insert"] = max(best["bare Native insert"], native_run(conn.client, columns))
            truncate(conn.client)
            best["exporter, aggregation on"] = exporter_run(dsn, batches, aggregate=True)
            results[size] = best
            del batches, prepared, columns
            gc.collect()
        per_stage = stages(conn.client, args.rows // 2, 100_000 if args.rows >= 200_000 else 10_000, args.repeat)
    finally:
        conn.close()
        shutil.rmtree(workdir, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ratios = {size: r["exporter"] / r["bare insert_arrow"] for size, r in results.items()}
    ok = all(v >= TARGET for v in ratios.values())
    for size, r in results.items():
        t = gc_timers[size]
        print(f"batch {size:,}: " + ", ".join(f"{k} {v:,.0f} rows/s" for k, v in r.items())
              + f"; ratio {ratios[size]:.2f}; exporter RSS +{memory[size]['exporter']:.0f} MiB; "
              f"GC {t.collections} collections, {t.seconds * 1e3:.1f} ms in {args.repeat} exporter runs")
    for name, (thread, process) in per_stage.items():
        print(f"  {name}: {thread:.2f} µs/record in the calling thread, {process:.2f} µs/record in the process")
    print(f"peak RSS: {peak:.0f} MiB; result: {'PASS' if ok else 'FAIL'} (target ratio >= {TARGET})")
    if not args.no_doc:
        write_doc(results, ratios, memory, gc_timers, per_stage, peak=peak, ok=ok, args=args,
                  load=(load_before, os.getloadavg()[0]))
    return 0 if ok else 1


def write_doc(
    results: dict[int, dict[str, float]], ratios: dict[int, float], memory: dict[int, dict[str, float]],
    gc_timers: dict[int, GcTimer], per_stage: dict[str, tuple[float, float]], *,
    peak: float, ok: bool, args: argparse.Namespace, load: tuple[float, float],
) -> None:
    cpu_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.machine())
    import chdb
    import clickhouse_connect

    rows = []
    for size, r in results.items():
        ref = r["bare insert_arrow"]
        rows += [f"| {size:,} | {name} | {v:,.0f} | {v / ref:.2f}x |" for name, v in r.items()]
    stage_rows = [f"| {name} | {t:.2f} | {p:.2f} | {max(p - t, 0):.2f} |" for name, (t, p) in per_stage.items()]
    gc_text = ", ".join(
        f"{t.collections} collections / {t.seconds * 1e3:.1f} ms over {args.repeat} runs of {args.rows:,} "
        f"records in {s:,}-row blocks" for s, t in gc_timers.items()
    )
    section = "\n".join([
        START,
        "## clickhouse",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {cpu_name}, {os.cpu_count()} cores (shared), "
        f"Python {platform.python_version()}, chDB {chdb.__version__}, clickhouse-connect "
        f"{clickhouse_connect.__version__}; `.venv/bin/python bench/clickhouse_bench.py --rows {args.rows} "
        f"--repeat {args.repeat}`. Load average before/after: {load[0]:.1f}/{load[1]:.1f} (other jobs share "
        "the machine; absolute rates vary a lot between runs, the ratios come from alternating runs in one "
        "process).",
        "",
        f"{args.rows:,} flow records per run (Arrow flow tables, as converted stages hand them on) into the "
        f"shipped `network_flows_0` DDL in chDB, best of {args.repeat} alternating runs. **exporter**: "
        "`consume` → memory queue → one block per batch → columnar mapping → `client.insert_arrow` with "
        "`insert_deduplication_token`, pre-aggregation off (every flow has its own key). **bare "
        "insert_arrow**: the same rows already mapped, one `insert_arrow` per batch (the mapping is not "
        "counted). **bare Native insert**: the same rows as Python columns already built, one "
        "`client.insert(column_oriented=True)` per batch. Every insert carries a fresh "
        "`insert_deduplication_token`, as the exporter's do. Ratio = rows/s / bare insert_arrow. "
        "*exporter, aggregation on* is a single run, for information (with every key distinct, aggregation "
        "only costs).",
        "",
        "| batch | path | rows/s | vs bare insert_arrow |",
        "|---|---|---|---|",
        *rows,
        "",
        "CPU per input flow record of each stage, same run (best of the repeats; *process* includes chDB's "
        "own threads, *other threads* = process − calling thread):",
        "",
        "| stage | calling thread µs | process µs | other threads µs |",
        "|---|---|---|---|",
        *stage_rows,
        "",
        f"Cyclic GC during the exporter runs (default thresholds): {gc_text}. "
        "RSS the exporter adds while it maps and inserts (highest sample above the start): "
        + ", ".join(f"+{memory[s]['exporter']:.0f} MiB with {s:,}-row blocks" for s in memory) + ". "
        f"Peak RSS of the whole bench process: {peak:.0f} MiB (it also holds the flows, the reference rows "
        "and the chDB engine). "
        "Ratio: " + ", ".join(f"{ratios[s]:.2f} at {s:,}" for s in ratios)
        + f" (target >= {TARGET}). Outcome: **{'PASS' if ok else 'FAIL'}**. The mapping reads the flow "
        "table's columns (strings as dictionary codes), groups with pyarrow and hands the engine an Arrow "
        "table built from the codes, so no Python object is made per record; the engine's own MergeTree "
        "insert (sorting, compressing) is most of what remains.",
        END,
    ])
    replace_section(START, END, section)


if __name__ == "__main__":
    sys.exit(main())
