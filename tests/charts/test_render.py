"""Every chart × values scenario × Kubernetes version renders, lints, and validates strictly.

Manifests go through kubernetes-validate in strict mode (unknown fields and unknown kinds
fail) against the schemas of the Kubernetes version helm rendered for. Prometheus-operator
kinds have no schema there; they are checked against the fields of their CRD we use.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.charts.conftest import RenderFn
from tests.charts.helm import AGENT, KUBE_VERSIONS, SERVER, run_helm
from tests.charts.scenarios import AGENT_SCENARIOS, MONITORING_API, SERVER_SCENARIOS, Scenario

CASES = [
    pytest.param(chart, scenario, version, id=f"{chart.name}-{scenario.name}-{version}")
    for chart, scenarios in ((SERVER, SERVER_SCENARIOS), (AGENT, AGENT_SCENARIOS))
    for scenario in scenarios
    for version in KUBE_VERSIONS
]

_SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": {"type": "object", "minProperties": 1,
                                   "additionalProperties": {"type": "string"}}},
    "required": ["matchLabels"],
    "additionalProperties": False,
}
_ENDPOINT = {
    "type": "object",
    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                   "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"}},
    "required": ["port"],
    "additionalProperties": False,
}
# The subset of the monitoring.coreos.com/v1 CRDs (prometheus-operator) the charts emit.
MONITOR_SCHEMAS: dict[str, dict[str, Any]] = {
    kind: {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": MONITORING_API},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints],
                "properties": {
                    "selector": _SELECTOR,
                    "namespaceSelector": {"type": "object", "properties": {
                        "matchNames": {"type": "array", "items": {"type": "string"}}}},
                    endpoints: {"type": "array", "minItems": 1, "items": _ENDPOINT},
                },
            },
        },
    }
    for kind, endpoints in (("ServiceMonitor", "endpoints"), ("PodMonitor", "podMetricsEndpoints"))
}


def validate_manifest(doc: dict[str, Any], kube_version: str) -> None:
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if doc.get("apiVersion") == MONITORING_API:
        jsonschema.validate(doc, MONITOR_SCHEMAS[doc["kind"]])
        return
    try:
        kubernetes_validate.validate(doc, kube_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise AssertionError(f"{name} is invalid for Kubernetes {kube_version}: {path}: {exc.message}") from None
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise AssertionError(f"{name}: {exc.message}") from None


@pytest.mark.parametrize(("chart", "scenario", "kube_version"), CASES)
def test_rendered_manifests_are_valid_kubernetes_objects(
    render: RenderFn, chart: Any, scenario: Scenario, kube_version: str
) -> None:
    rendered = render(chart, sets=scenario.sets, values=scenario.values, kube_version=kube_version)
    assert rendered.docs, "helm rendered nothing"
    for doc in rendered.docs:
        validate_manifest(doc, kube_version)


@pytest.mark.parametrize("chart", [SERVER, AGENT], ids=lambda c: c.name)
def test_monitors_render_when_enabled_and_match_their_crd(render: RenderFn, chart: Any) -> None:
    sets = {"metrics.podMonitor.enabled": "true"}
    if chart is SERVER:
        sets["metrics.serviceMonitor.enabled"] = "true"
    rendered = render(chart, sets=sets)
    monitors = [d for d in rendered.docs if d["apiVersion"] == MONITORING_API]
    assert {d["kind"] for d in monitors} == ({"ServiceMonitor", "PodMonitor"} if chart is SERVER else {"PodMonitor"})
    workload = rendered.one("Deployment" if chart is SERVER else "DaemonSet")
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    for monitor in monitors:
        validate_manifest(monitor, KUBE_VERSIONS[-1])
        # The monitor must select the pods (PodMonitor) or the Service (ServiceMonitor) we create.
        selector = monitor["spec"]["selector"]["matchLabels"]
        target_labels = pod_labels if monitor["kind"] == "PodMonitor" else rendered.one("Service")["metadata"]["labels"]
        assert selector.items() <= target_labels.items()
    default = render(chart)
    assert not [d for d in default.docs if d["apiVersion"] == MONITORING_API], "monitors must be opt-in"


@pytest.mark.parametrize("chart", [SERVER, AGENT], ids=lambda c: c.name)
@pytest.mark.parametrize("scenario", ["defaults", "readme"])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_helm_lint_strict_passes(helm: str, chart: Any, scenario: str, kube_version: str) -> None:
    scenarios = SERVER_SCENARIOS if chart is SERVER else AGENT_SCENARIOS
    sets = next(s for s in scenarios if s.name == scenario).sets
    args = ["lint", "--strict", str(chart), "--kube-version", kube_version]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    proc = run_helm(helm, args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
