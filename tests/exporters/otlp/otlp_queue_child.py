"""Child process of the kill -9 test: an agent whose acknowledgement never comes back.

Run as ``python -m tests.exporters.otlp.otlp_queue_child PORT QUEUE_DIR SEED START_NS``: the parent's
records' start time (``otlp_testkit.T0`` is taken at import, and the child may import it in the next hour).
It starts an ``otlp`` exporter with a persistent queue pointed at the test's
receiver (which consumes the request and then loses the answer), hands it
one batch, prints ``accepted`` once the batch is durable, and keeps retrying
until it is killed.
"""

from __future__ import annotations

import sys
import time

from kubenetmon.flows import FlowBatch
from kubenetmon.testing import StaticHost
from tests.otlp.otlp_testkit import exporter_config, make_exporter, make_records


def main() -> None:
    port, queue_dir, seed, start = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    config = exporter_config(port, sending_queue={"storage": "persistent", "directory": queue_dir},
                             retry_on_failure={"initial_interval": 0.1, "max_interval": 0.1})
    exporter = make_exporter(config)
    exporter.start(StaticHost())
    exporter.consume(FlowBatch(records=make_records(40, seed=seed, start=start)))
    print("accepted", flush=True)
    time.sleep(120)  # the parent kills us long before


if __name__ == "__main__":
    main()
