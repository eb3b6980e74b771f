"""Records queued by the agents during a gateway outage reach the gateway after a pod was deleted and its
IPs given to a new pod (issue 13.2): the old pod's bytes are stored under the old pod, the new pod's under
the new one, because k8s_attributes resolves addresses as of each record's interval."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kubenetmon.demo.pipeline import PipelineSettings
from kubenetmon.demo.traffic import run_exchanges
from tests.e2e.harness import catalog_exchanges, metered_cluster, reuse_catalog_ips_and_check

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(180)]


def test_queued_records_of_a_deleted_pod_whose_ips_were_reused_go_to_the_old_pod(tmp_path: Path) -> None:
    # A slow retry keeps the agents' queued batches back for a while after the gateway is up again,
    # so that the pod is deleted and its IPs reused before they arrive (what the outage did in the issue).
    settings = PipelineSettings(metrics=True, retry_initial=3.0, retry_max=3.0)
    with metered_cluster(tmp_path, settings) as m:
        interval = m.pipeline.settings.interval
        m.pipeline.start()
        m.wait_until_metering()
        m.pipeline.gateway.kill()  # the outage: agents meter on and queue on disk
        before = run_exchanges(catalog_exchanges(m))
        time.sleep(3 * interval)  # the old pod's records are dumped and queued by the agents
        m.pipeline.start_gateway()  # lists the old pod; the queued batches wait for the agents' next retry
        reuse_catalog_ips_and_check(m, before)
