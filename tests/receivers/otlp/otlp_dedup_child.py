"""Child process of the kill -9 dedup test: a gateway receiver whose consumer writes durably.

Run as ``python -m tests.receivers.otlp.otlp_dedup_child DEDUP_JOURNAL SINK_FILE``.
Starts an ``otlp`` receiver on a free loopback port with the dedup window
journaled to DEDUP_JOURNAL; every consumed batch appends one line (its
records' count) to SINK_FILE and fsyncs it before the acknowledgement, like
a persistent queue would. Prints ``port N`` and serves until killed.
"""

from __future__ import annotations

import os
import sys
import time

from kubenetmon.flows import FlowBatch
from kubenetmon.testing import SinkConsumer
from tests.otlp.otlp_testkit import start_receiver


class DurableSink(SinkConsumer):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def consume(self, batch: FlowBatch) -> None:
        os.write(self.fd, f"{len(batch.records)}\n".encode())
        os.fsync(self.fd)


def main() -> None:
    journal, sink = sys.argv[1], sys.argv[2]
    receiver = start_receiver(DurableSink(sink), dedup={"path": journal})
    print(f"port {receiver.port}", flush=True)
    time.sleep(120)  # the parent kills us long before


if __name__ == "__main__":
    main()
