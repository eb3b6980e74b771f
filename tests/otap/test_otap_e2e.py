"""The whole pipeline (real agents, gateway and chDB; shipped configs) over OTAP and over OTLP.

The same traffic plan as ``tests/e2e/test_metering.py`` runs twice on a
fresh mini-cluster: once with the shipped agent config as it is (OTAP) and
once with ``KUBENETMON_GATEWAY_OTAP=false`` (plain OTLP). Each time the
table must hold exactly the bytes both kernels counted per pair: what OTAP
stores is what OTLP stores, and both are the truth.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kubenetmon.demo.expected import attribute
from kubenetmon.demo.pipeline import PipelineSettings
from kubenetmon.demo.traffic import run_exchanges
from tests.e2e.harness import PORT, expected_pairs, ground_truth, metered_cluster, table_pairs, table_rows
from tests.e2e.test_metering import _plan

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.mark.parametrize("otap", [True, False], ids=["otap", "otlp"])
def test_every_pair_gets_exactly_the_kernels_bytes_over_otap_and_over_otlp(
    otap: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBENETMON_GATEWAY_OTAP", "true" if otap else "false")
    with metered_cluster(tmp_path, PipelineSettings(metrics=True)) as m:
        service = m.cluster.add_cluster_ip("search", m.cluster.pods["search-0"], port=80, target_port=PORT)
        m.pipeline.start()
        m.wait_until_metering()
        results = run_exchanges(_plan(m.cluster, service.cluster_ip))
        assert [r.error for r in results if r.error] == []
        m.settle()
        bars = m.pipeline.metric("gateway", "kubenetmon_receiver_otap_bars_total")
        exports = m.pipeline.metric("gateway", "kubenetmon_receiver_otlp_requests_total")
        fallbacks = sum(m.pipeline.metric(f"agent-{node}", "kubenetmon_exporter_otap_bars_total")
                        for node in m.cluster.nodes) - bars
        m.pipeline.stop()
        truth = ground_truth(m.cluster)
        expected = expected_pairs(attribute(truth, m.cluster))
        assert len(expected) >= 20
        assert table_pairs(table_rows(m.pipeline)) == expected, m.pipeline.logs()
    if otap:
        assert bars > 0 and exports == 0 and fallbacks == 0  # every batch came as a BAR, none fell back
    else:
        assert bars == 0 and exports > 0
