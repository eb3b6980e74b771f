"""A small agent for restart tests: the conntrack receiver delivering into a file.

Run as ``python -m tests.receivers.conntrack.conntrack_driver --netns NS
--checkpoint PATH --out FILE [--interval S]``. Each delivered batch is one
JSON line ``{"batch_id": ..., "records": [[field, ...], ...]}``, appended and
fsynced before ``consume`` returns, so a line exists exactly for every batch
the receiver may consider delivered. Readers deduplicate by ``batch_id``, as
the gateway does. SIGTERM shuts the receiver down gracefully; the tests also
``kill -9`` it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from kubenetmon.flows import ConntrackRecord, FlowBatch
from kubenetmon.receivers.conntrack import ConntrackConfig, factory
from kubenetmon.testing import StaticHost, create_component


class FileConsumer:
    """Appends each batch as a JSON line and fsyncs it before returning."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def consume(self, batch: FlowBatch) -> None:
        line = json.dumps({"batch_id": batch.batch_id, "records": [dataclasses.astuple(r) for r in batch.records]})
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_delivered(path: Path) -> list[ConntrackRecord]:
    """Every record of every complete line, each batch id counted once."""
    seen: set[str] = set()
    records: list[ConntrackRecord] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return []
    for line in lines:
        if not line.endswith("\n"):
            continue  # torn by kill -9: consume never returned, so it is re-delivered
        entry: dict[str, Any] = json.loads(line)
        if entry["batch_id"] in seen:
            continue
        seen.add(entry["batch_id"])
        records.extend(ConntrackRecord(*r) for r in entry["records"])
    return records


def spawn_driver(netns: str, checkpoint: Path, out: Path) -> subprocess.Popen[bytes]:
    """This driver as a real agent process (0.2 s interval) in ``netns``, once it says it started."""
    cmd = [
        sys.executable, "-m", "tests.receivers.conntrack.conntrack_driver",
        "--netns", netns, "--checkpoint", str(checkpoint), "--out", str(out), "--interval", "0.2",
    ]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[3], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
    return proc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--netns", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = ConntrackConfig(
        netns=args.netns, node_name="node-a", interval=args.interval, checkpoint_path=args.checkpoint,
        skip_sanity_check=True,
    )
    receiver = create_component(factory, config, consumer=FileConsumer(Path(args.out)))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    receiver.start(StaticHost())
    print("started", flush=True)
    stop.wait()
    receiver.shutdown(30)


if __name__ == "__main__":
    main()
