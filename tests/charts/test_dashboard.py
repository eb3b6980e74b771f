"""The server chart's optional Grafana dashboard ConfigMap, rendered by the real helm."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.charts.conftest import RenderFn
from tests.charts.helm import KUBE_VERSIONS, README_SERVER_SETS, REPO, SERVER, Rendered, run_helm
from tests.charts.test_render import validate_manifest

DASHBOARD = REPO / "dashboards" / "kubenetmon.json"


def _dashboard_maps(rendered: Rendered) -> list[dict[str, Any]]:
    return [d for d in rendered.of_kind("ConfigMap") if d["metadata"]["name"].endswith("-grafana-dashboard")]


def test_no_dashboard_configmap_unless_enabled(render: RenderFn) -> None:
    assert _dashboard_maps(render(SERVER, sets=README_SERVER_SETS)) == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_dashboard_configmap_is_labelled_for_the_sidecar_and_holds_the_repo_json(
    render: RenderFn, kube_version: str
) -> None:
    rendered = render(SERVER, sets={**README_SERVER_SETS, "grafanaDashboard.enabled": "true"},
                      namespace="metering", kube_version=kube_version)
    (configmap,) = _dashboard_maps(rendered)
    validate_manifest(configmap, kube_version)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "metering"
    shipped = configmap["data"]["kubenetmon.json"]
    assert json.loads(shipped) == json.loads(DASHBOARD.read_text())
    # The pipeline's ConfigMap is still the only other one: the gateway's config is unchanged.
    assert len(rendered.of_kind("ConfigMap")) == 2


def test_dashboard_configmap_namespace_label_and_annotations_are_settable(render: RenderFn) -> None:
    rendered = render(SERVER, values={
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring", "label": "grafana.io/dashboard",
                             "labelValue": "yes", "annotations": {"grafana_folder": "Network"}},
    })
    (configmap,) = _dashboard_maps(rendered)
    meta = configmap["metadata"]
    assert meta["namespace"] == "monitoring"
    assert meta["labels"]["grafana.io/dashboard"] == "yes"
    assert meta["annotations"] == {"grafana_folder": "Network"}


def test_schema_rejects_a_misspelt_dashboard_key(helm: str) -> None:
    proc = run_helm(helm, ["template", "x", str(SERVER), "--set", "grafanaDashboard.enable=true"], check=False)
    assert proc.returncode != 0
    assert "enable" in proc.stderr
