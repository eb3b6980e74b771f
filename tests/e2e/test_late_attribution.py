"""Records queued by the agents during a gateway outage reach the gateway after a pod was deleted and its
IPs given to a new pod (issue 13.2): the old pod's bytes are stored under the old pod, the new pod's under
the new one, because k8s_attributes resolves addresses as of each record's interval."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kubenetmon.demo.expected import attribute
from kubenetmon.demo.minicluster import PodSpec
from kubenetmon.demo.pipeline import PipelineSettings
from kubenetmon.demo.traffic import Exchange, run_exchanges
from tests.e2e.harness import PORT, assert_pairs_exact, ground_truth, metered_cluster

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(180)]


def test_queued_records_of_a_deleted_pod_whose_ips_were_reused_go_to_the_old_pod(tmp_path: Path) -> None:
    # A slow retry keeps the agents' queued batches back for a while after the gateway is up again,
    # so that the pod is deleted and its IPs reused before they arrive (what the outage did in the issue).
    settings = PipelineSettings(metrics=True, retry_initial=3.0, retry_max=3.0)
    with metered_cluster(tmp_path, settings) as m:
        cluster, interval = m.cluster, m.pipeline.settings.interval
        m.pipeline.start()
        m.wait_until_metering()
        frontend = cluster.pods["frontend-0"]

        def to_catalog() -> list[Exchange]:
            catalog = cluster.pods.get("catalog-0") or cluster.pods["catalog-1"]
            assert catalog.ipv6
            return [Exchange(frontend.netns, catalog.ipv4, PORT, "tcp", 2000, 3000, rounds=2),
                    Exchange(frontend.netns, catalog.ipv6, PORT, "udp", 100, 200, rounds=3)]

        m.pipeline.gateway.kill()  # the outage: agents meter on and queue on disk
        before = run_exchanges(to_catalog())
        time.sleep(3 * interval)  # the old pod's records are dumped and queued by the agents
        m.pipeline.start_gateway()  # lists the old pod; the queued batches wait for the agents' next retry
        old = cluster.delete_pod("catalog-0")
        m.api.delete_pod(old.name, old.namespace)
        new = cluster.add_pod(PodSpec("catalog-1", "shop", "catalog", "node-b"), ipv4=old.ipv4, ipv6=old.ipv6)
        m.api.add_pod(new.name, new.namespace, node=new.node, ips=new.ips, labels=new.labels)
        m.serve(new)
        time.sleep(interval)
        after = run_exchanges(to_catalog())
        assert not [r.error for r in before + after if r.error]
        m.settle()

        truth = ground_truth(cluster)
        old_ports = {r.client_port for r in before}
        old_entries = {n: [e for e in es if e.sport in old_ports] for n, es in truth.items()}
        new_entries = {n: [e for e in es if e.sport not in old_ports] for n, es in truth.items()}
        expected = attribute(old_entries, cluster, lambda a: old if a in old.ips else cluster.pod_by_ip(a))
        expected += attribute(new_entries, cluster)
        rows = assert_pairs_exact(m, expected)
        sent = {pod: sum(r.bytes for r in rows if (r["localPod"], r["remotePod"], r["direction"])
                         == ("frontend-0", pod, "out")) for pod in ("catalog-0", "catalog-1")}
        assert sent["catalog-0"] > 4000 and sent["catalog-1"] > 4000
