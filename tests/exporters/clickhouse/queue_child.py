"""Child process of the kill -9 test: commits one block, then "dies" holding more on disk.

Run as ``python -m tests.exporters.clickhouse.queue_child DSN QUEUE_DIR T0_NS`` (the parent's time base:
``clickhouse_testkit.T0_NS`` is taken at import, and the child may import it on the next day).
Block 1 is inserted into chDB but its acknowledgement never comes back (the
insert hangs after the engine committed it); batches 2 and 3 are then
accepted into the persistent queue. It prints ``token <id>`` and ``ready``
and waits to be killed.
"""

from __future__ import annotations

import sys
import threading

from kubenetmon.component import Kind
from kubenetmon.exporters.clickhouse import ClickHouseConfig
from kubenetmon.flows import FlowBatch
from kubenetmon.testing import StaticHost, create_settings
from tests.exporters.clickhouse.clickhouse_testkit import IDENTITY, SECOND, T0_NS, make_flow
from tests.exporters.clickhouse.faults import FaultyExporter

BATCH_BYTES = ((1, 2, 3), (10, 20), (100, 200, 300, 400))


def batch(i: int, t0: int = T0_NS) -> FlowBatch:
    return FlowBatch(flows=[
        make_flow("out", nbytes=n, end_ns=t0 + (i * 60 + k + 1) * SECOND) for k, n in enumerate(BATCH_BYTES[i])
    ])


class HangsOnFirstInsert(FaultyExporter):
    plan = staticmethod(lambda n: "hang" if n == 0 else "ok")


def main(dsn: str, queue_dir: str, t0: int) -> None:
    config = ClickHouseConfig.model_validate({
        "endpoint": dsn,
        "sending_queue": {"storage": "persistent", "directory": queue_dir},
        "batch": {"max_wait": 0},
    })
    exporter = HangsOnFirstInsert(create_settings(Kind.EXPORTER, "clickhouse", identity=IDENTITY), config)
    exporter.start(StaticHost())
    exporter.consume(batch(0, t0))
    while exporter.faulty is None or not exporter.faulty.committed.wait(0.05):
        pass
    print(f"token {exporter.faulty.calls[0][1]}", flush=True)
    exporter.consume(batch(1, t0))  # durable on disk when consume returns
    exporter.consume(batch(2, t0))
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
