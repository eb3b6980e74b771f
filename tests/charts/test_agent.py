"""The kubenetmon-agent chart: host network, least privilege, node state, gateway address."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.charts.conftest import RenderFn
from tests.charts.helm import AGENT, README_AGENT_SETS, README_SERVER_SETS, SERVER, kubenetmon_validate, run_helm
from tests.charts.scenarios import AGENT_SCENARIOS, Scenario


def _conntrack(rendered: Any) -> dict[str, Any]:
    receiver = rendered.configmap_pipeline()["receivers"]["conntrack"]
    assert isinstance(receiver, dict)
    return receiver


def _otlp(rendered: Any) -> dict[str, Any]:
    exporter = rendered.configmap_pipeline()["exporters"]["otlp"]
    assert isinstance(exporter, dict)
    return exporter


@pytest.mark.parametrize("scenario", AGENT_SCENARIOS, ids=lambda s: s.name)
def test_configmap_pipeline_passes_kubenetmon_validate(render: RenderFn, scenario: Scenario, tmp_path: Path) -> None:
    rendered = render(AGENT, sets=scenario.sets, values=scenario.values)
    kubenetmon_validate(rendered.configmap_pipeline(), tmp_path, scenario.env)


def test_agent_has_net_admin_only_and_a_read_only_root(render: RenderFn) -> None:
    sc = render(AGENT, sets=README_AGENT_SETS).container("kubenetmon-agent")["securityContext"]
    assert sc["capabilities"] == {"add": ["NET_ADMIN"], "drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["runAsUser"] == 0


def test_agent_runs_in_the_host_network_namespace(render: RenderFn) -> None:
    pod = render(AGENT).pod_spec()
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    # It never calls the Kubernetes API.
    assert pod["automountServiceAccountToken"] is False


def test_node_name_comes_from_the_downward_api(render: RenderFn) -> None:
    rendered = render(AGENT)
    env = {e["name"]: e for e in rendered.container("kubenetmon-agent")["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "${env:NODE_NAME}" in rendered.one("ConfigMap")["data"]["config.yaml"]


def test_queue_on_disk_and_checkpoint_on_tmpfs_per_release_host_paths(render: RenderFn) -> None:
    rendered = render(AGENT, release="metering")
    fullname = rendered.one("DaemonSet")["metadata"]["name"]
    assert fullname == "metering-kubenetmon-agent"
    host_paths = {v["name"]: v["hostPath"] for v in rendered.pod_spec()["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m["mountPath"] for m in rendered.container("kubenetmon-agent")["volumeMounts"]}

    def host_path_of(container_path: str) -> str:
        name = next(n for n, m in mounts.items() if container_path.startswith(m + "/") and n in host_paths)
        assert host_paths[name]["type"] == "DirectoryOrCreate"
        return str(host_paths[name]["path"])

    queue = _otlp(rendered)["sending_queue"]
    assert queue["storage"] == "persistent"
    assert host_path_of(queue["directory"]) == f"/var/lib/kubenetmon/{fullname}"
    assert host_path_of(_conntrack(rendered)["checkpoint_path"]) == f"/run/kubenetmon/{fullname}"
    # A gateway outage never drops what is on disk: retry without a deadline, block when full.
    assert queue["full_policy"] == "block"
    assert _otlp(rendered)["retry_on_failure"]["max_elapsed_time"] == 0


def test_priority_class_is_named_from_the_release(render: RenderFn) -> None:
    rendered = render(AGENT, release="kubenetmon-agent-eu", namespace="metering")
    pc = rendered.one("PriorityClass")
    # Cluster-scoped: the namespace is part of the name, so releases elsewhere do not collide.
    assert pc["metadata"]["name"] == "kubenetmon-agent-eu-metering"
    assert rendered.pod_spec()["priorityClassName"] == pc["metadata"]["name"]
    existing = render(AGENT, sets={"priorityClass.enabled": "false", "priorityClass.name": "system-node-critical"})
    assert not existing.of_kind("PriorityClass")
    assert existing.pod_spec()["priorityClassName"] == "system-node-critical"


def test_agent_tolerates_every_taint_by_default(render: RenderFn) -> None:
    assert {"operator": "Exists"} in render(AGENT).pod_spec()["tolerations"]


def test_default_gateway_is_the_server_charts_service_from_its_readme_install(render: RenderFn) -> None:
    server = render(SERVER, sets=README_SERVER_SETS, release="kubenetmon-server", namespace="kubenetmon-server")
    service = server.one("Service")
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "otlp-grpc")
    address = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:{port}"
    agent = render(AGENT, sets=README_AGENT_SETS, release="kubenetmon-agent", namespace="kubenetmon-agent")
    assert address == "kubenetmon-server.kubenetmon-server.svc.cluster.local:4317"
    assert _otlp(agent)["endpoint"] == address


def test_gateway_address_can_be_overridden(render: RenderFn) -> None:
    rendered = render(AGENT, sets={"configuration.kubenetmonServerServiceHost": "gw.metering.svc.cluster.local",
                                   "configuration.kubenetmonServerServicePort": "4999"})
    assert _otlp(rendered)["endpoint"] == "gw.metering.svc.cluster.local:4999"


def test_skip_conntrack_sanity_check_reaches_the_receiver(render: RenderFn) -> None:
    skipped = _conntrack(render(AGENT, sets=README_AGENT_SETS))
    default = _conntrack(render(AGENT))
    assert skipped != default
    assert skipped["skip_sanity_check"] is True and default["skip_sanity_check"] is False


def test_collection_interval_is_converted_to_seconds(render: RenderFn) -> None:
    rendered = render(AGENT, sets={"configuration.collectionInterval": "1m30s",
                                   "configuration.uptimeWaitDuration": "500ms"})
    assert float(_conntrack(rendered)["interval"]) == 90.0
    assert float(_conntrack(rendered)["uptime_wait"]) == 0.5


def test_sysctls_set_by_a_privileged_init_container_by_default(render: RenderFn) -> None:
    rendered = render(AGENT)
    (init,) = rendered.pod_spec()["initContainers"]
    assert init["securityContext"]["privileged"] is True
    script = init["command"][-1]
    # Every sysctl the conntrack receiver requires in its default (delta) mode, from its own list.
    from kubenetmon.receivers.conntrack.receiver import _SYSCTLS, _TIMESTAMP_SYSCTL

    for key in (*_SYSCTLS, _TIMESTAMP_SYSCTL):
        assert key.rsplit(".", 1)[1] in script.split("for key in", 1)[1].split(";", 1)[0], key
    assert _conntrack(rendered)["configure_sysctls"] is False
    # Only the short init step is privileged; the agent keeps NET_ADMIN only.
    assert rendered.container("kubenetmon-agent")["securityContext"]["privileged"] is False


@pytest.mark.parametrize(("mode", "agent_sets_them"), [("agent", True), ("operator", False)])
def test_sysctls_without_init_container(render: RenderFn, mode: str, agent_sets_them: bool) -> None:
    rendered = render(AGENT, sets={"configuration.sysctls": mode})
    assert "initContainers" not in rendered.pod_spec()
    assert _conntrack(rendered)["configure_sysctls"] is agent_sets_them


def test_health_probes_and_metrics_match_the_pipeline(render: RenderFn) -> None:
    rendered = render(AGENT, sets={"healthCheck.port": "13999", "metrics.port": "9883"})
    pipeline = rendered.configmap_pipeline()
    container = rendered.container("kubenetmon-agent")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert pipeline["extensions"]["health_check"]["endpoint"].endswith(":13999") and ports["health"] == 13999
    assert pipeline["service"]["telemetry"]["metrics"]["address"].endswith(":9883") and ports["metrics"] == 9883
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "health"}
    assert pipeline["service"]["pipelines"]["flows"] == {"receivers": ["conntrack"], "exporters": ["otlp"]}


def test_gateway_tls_and_token_are_wired(render: RenderFn) -> None:
    tls = next(s for s in AGENT_SCENARIOS if s.name == "tls")
    rendered = render(AGENT, sets=tls.sets)
    container = rendered.container("kubenetmon-agent")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in rendered.pod_spec()["volumes"]}
    assert volumes["gateway-ca"]["secret"]["secretName"] == "kubenetmon-gateway-ca"
    exporter = _otlp(rendered)
    assert str(exporter["tls"]["ca_file"]).startswith(mounts["gateway-ca"] + "/")
    assert exporter["tls"].get("insecure", False) is False
    assert exporter["headers"] == {"authorization": "Bearer ${env:KUBENETMON_AGENT_TOKEN}"}
    token_env = next(e for e in container["env"] if e["name"] == "KUBENETMON_AGENT_TOKEN")
    (secret,) = rendered.of_kind("Secret")
    assert token_env["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert base64.b64decode(secret["data"]["token"]).decode() == "agent-token-value"
    assert "agent-token-value" not in rendered.one("ConfigMap")["data"]["config.yaml"]


def test_plaintext_to_the_gateway_by_default(render: RenderFn) -> None:
    exporter = _otlp(render(AGENT))
    assert exporter["tls"] == {"insecure": True}
    assert "headers" not in exporter


def test_notes_tell_what_to_check(helm: str) -> None:
    args = ["install", "kubenetmon-agent", str(AGENT), "--namespace", "kubenetmon-agent", "--dry-run=client",
            "--set", "configuration.skipConntrackSanityCheck=true"]
    notes = run_helm(helm, args).stdout.split("NOTES:", 1)[1]
    assert "rollout status daemonset/kubenetmon-agent" in notes
    assert "kubenetmon-server.kubenetmon-server.svc.cluster.local:4317" in notes
    assert "skipConntrackSanityCheck=true" in notes


def test_records_go_to_the_gateway_as_otap_unless_turned_off(render: RenderFn) -> None:
    exporter = render(AGENT).configmap_pipeline()["exporters"]["otlp"]
    assert exporter["arrow"] == {"enabled": True}
    off = render(AGENT, sets={"gateway.otap": "false"}).configmap_pipeline()["exporters"]["otlp"]
    assert off["arrow"] == {"enabled": False}
