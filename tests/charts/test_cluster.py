"""The kubenetmon-server chart's ClickHouse cluster settings: failover endpoints and table layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.charts.conftest import RenderFn
from tests.charts.helm import README_SERVER_SETS, SERVER, kubenetmon_validate, run_helm

REPLICATED = {
    "inserter": {
        "endpoint": "https://ch-0.metering.svc:8443",
        "failoverEndpoints": ["https://ch-1.metering.svc:8443", "https://ch-2.metering.svc:8443"],
        "createSchema": True,
        "cluster": {"mode": "replicated", "name": "metering", "shardingKey": "cityHash64(localPod, remotePod)"},
    },
}


def test_replicated_cluster_and_failover_reach_the_exporter(render: RenderFn, tmp_path: Path) -> None:
    sets = {k: v for k, v in README_SERVER_SETS.items() if k != "inserter.endpoint"}  # --set would win
    rendered = render(SERVER, sets=sets, values=REPLICATED)
    exporter = rendered.configmap_pipeline()["exporters"]["clickhouse"]
    assert exporter["endpoint"].startswith("https://ch-0.metering.svc:8443")
    assert exporter["failover_endpoints"] == ["https://ch-1.metering.svc:8443", "https://ch-2.metering.svc:8443"]
    assert exporter["create_schema"] is True
    assert exporter["cluster"] == {"mode": "replicated", "name": "metering",
                                   "sharding_key": "cityHash64(localPod, remotePod)"}
    kubenetmon_validate(rendered.configmap_pipeline(), tmp_path)


def test_cloud_layout_renders_and_validates(render: RenderFn, tmp_path: Path) -> None:
    rendered = render(SERVER, sets={**README_SERVER_SETS, "inserter.cluster.mode": "cloud"})
    exporter = rendered.configmap_pipeline()["exporters"]["clickhouse"]
    assert exporter["cluster"] == {"mode": "cloud"}
    assert "failover_endpoints" not in exporter
    kubenetmon_validate(rendered.configmap_pipeline(), tmp_path)


def test_single_server_renders_no_cluster_keys(render: RenderFn) -> None:
    exporter = render(SERVER, sets=README_SERVER_SETS).configmap_pipeline()["exporters"]["clickhouse"]
    assert not {"cluster", "failover_endpoints", "create_schema"} & set(exporter)


def test_replicated_without_a_cluster_name_fails_with_what_to_set(helm: str) -> None:
    proc = run_helm(helm, ["template", "x", str(SERVER), "--set", "inserter.cluster.mode=replicated"], check=False)
    assert proc.returncode != 0
    assert "inserter.cluster.name is required" in proc.stderr


@pytest.mark.parametrize(("key", "value"), [
    ("inserter.cluster.mode", "sharded"),
    ("inserter.failoverEndpoints[0]", "ch-1:8443"),
    ("inserter.cluster.name", "bad name"),
])
def test_schema_rejects_bad_cluster_values(helm: str, key: str, value: str) -> None:
    proc = run_helm(helm, ["template", "x", str(SERVER), "--set", f"{key}={value}"], check=False)
    assert proc.returncode != 0
    dotted = key.replace("[0]", ".0")
    # The schema names the value at fault (helm 4 as a JSON pointer, helm 3 dotted).
    assert "/" + dotted.replace(".", "/") in proc.stderr or dotted in proc.stderr, proc.stderr


def test_acknowledge_stored_runs_the_clickhouse_exporter_without_a_queue(render: RenderFn, tmp_path: Path) -> None:
    # docs/scaling.md: a gateway acknowledges an agent batch only once it is stored.
    rendered = render(SERVER, sets={**README_SERVER_SETS, "inserter.acknowledge": "stored"})
    assert rendered.configmap_pipeline()["exporters"]["clickhouse"]["sending_queue"] == {"enabled": False}
    kubenetmon_validate(rendered.configmap_pipeline(), tmp_path)
    queued = render(SERVER, sets=README_SERVER_SETS).configmap_pipeline()["exporters"]["clickhouse"]
    assert queued["sending_queue"]["storage"] == "persistent"
