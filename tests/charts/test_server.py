"""The kubenetmon-server chart: the gateway's pipeline, credentials, RBAC and pod spec."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.charts.conftest import RenderFn
from tests.charts.helm import README_SERVER_SETS, REPO, SERVER, kubenetmon_validate, run_helm
from tests.charts.scenarios import OTLP_INSTEAD_OF_CLICKHOUSE, SERVER_SCENARIOS, Scenario


def _rules(rendered: Any) -> set[tuple[str, str, str]]:
    role = rendered.one("ClusterRole")
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _read_only(group: str, *resources: str) -> set[tuple[str, str, str]]:
    return {(group, r, v) for r in resources for v in ("get", "list", "watch")}


def test_rbac_is_read_only_on_pods_and_nodes(render: RenderFn) -> None:
    rendered = render(SERVER, sets=README_SERVER_SETS)
    assert _rules(rendered) == _read_only("", "pods", "nodes")
    # The original's secrets-reading Role is not needed: credentials are mounted.
    assert not rendered.of_kind("Role") and not rendered.of_kind("RoleBinding")


def test_owner_attribution_adds_exactly_replicasets(render: RenderFn) -> None:
    rendered = render(SERVER, sets={**README_SERVER_SETS, "attribution.owners": "true"})
    assert _rules(rendered) == _read_only("", "pods", "nodes") | _read_only("apps", "replicasets")
    assert rendered.configmap_pipeline()["processors"]["k8s_attributes"]["owners"] is True


def test_cluster_role_is_bound_to_the_pods_service_account(render: RenderFn) -> None:
    rendered = render(SERVER, sets={"serviceAccount.name": "custom-sa"}, namespace="metering")
    binding = rendered.one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == rendered.one("ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "custom-sa", "namespace": "metering"}]
    assert rendered.one("ServiceAccount")["metadata"]["name"] == "custom-sa"
    assert rendered.pod_spec()["serviceAccountName"] == "custom-sa"


@pytest.mark.parametrize("scenario", SERVER_SCENARIOS, ids=lambda s: s.name)
def test_configmap_pipeline_passes_kubenetmon_validate(render: RenderFn, scenario: Scenario, tmp_path: Path) -> None:
    rendered = render(SERVER, sets=scenario.sets, values=scenario.values)
    kubenetmon_validate(rendered.configmap_pipeline(), tmp_path, scenario.env)


def test_readme_install_values_reach_the_pipeline(render: RenderFn) -> None:
    rendered = render(SERVER, sets=README_SERVER_SETS)
    pipeline = rendered.configmap_pipeline()
    identity = pipeline["service"]["identity"]
    for key in ("region", "cluster", "environment", "cloud"):
        assert identity[key] == README_SERVER_SETS[key]
    clickhouse = pipeline["exporters"]["clickhouse"]
    host = README_SERVER_SETS["inserter.endpoint"].rsplit(":", 1)[0]
    # Native TLS port 9440 becomes the HTTPS port 8443 (clickhouse-connect speaks HTTP).
    assert clickhouse["endpoint"] == f"https://{host}:8443"
    assert pipeline["service"]["pipelines"]["flows"]["exporters"] == ["clickhouse"]
    assert rendered.one("Deployment")["spec"]["replicas"] == 1


def test_password_is_in_the_secret_only(render: RenderFn) -> None:
    rendered = render(SERVER, sets=README_SERVER_SETS)
    password = README_SERVER_SETS["inserter.password"]
    secrets = rendered.of_kind("Secret")
    assert [base64.b64decode(s["data"]["password"]).decode() for s in secrets] == [password]
    others = [d for d in rendered.docs if d["kind"] != "Secret"]
    assert password not in str(others)
    clickhouse = rendered.configmap_pipeline()["exporters"]["clickhouse"]
    mounts = {m["name"]: m["mountPath"] for m in rendered.container("kubenetmon-server")["volumeMounts"]}
    volumes = {v["name"]: v for v in rendered.pod_spec()["volumes"]}
    assert volumes["clickhouse-credentials"]["secret"]["secretName"] == secrets[0]["metadata"]["name"]
    assert clickhouse["password_file"] == f"{mounts['clickhouse-credentials']}/password"
    assert clickhouse["username_file"] == f"{mounts['clickhouse-credentials']}/username"


def test_existing_secret_is_used_instead_of_creating_one(render: RenderFn) -> None:
    rendered = render(SERVER, sets={"inserter.existingSecret": "ch-creds", "inserter.existingSecretPasswordKey": "pw"})
    assert not rendered.of_kind("Secret")
    volumes = {v["name"]: v for v in rendered.pod_spec()["volumes"]}
    assert volumes["clickhouse-credentials"]["secret"]["secretName"] == "ch-creds"
    assert rendered.configmap_pipeline()["exporters"]["clickhouse"]["password_file"].endswith("/pw")


@pytest.mark.parametrize(
    ("sets", "expected", "mapped"),
    [
        ({"inserter.endpoint": "ch.example.com:9440"}, "https://ch.example.com:8443", True),
        ({"inserter.endpoint": "ch.example.com:9000", "inserter.disableTLS": "true"},
         "http://ch.example.com:8123", True),
        ({"inserter.endpoint": "ch.example.com:8443"}, "https://ch.example.com:8443", False),
        ({"inserter.endpoint": "http://ch.example.com:8123"}, "http://ch.example.com:8123", False),
        ({"inserter.endpoint": "ch.example.com"}, "https://ch.example.com:8443", False),
    ],
)
def test_clickhouse_endpoint_maps_native_ports_to_http(
    render: RenderFn, helm: str, sets: dict[str, str], expected: str, mapped: bool
) -> None:
    assert render(SERVER, sets=sets).configmap_pipeline()["exporters"]["clickhouse"]["endpoint"] == expected
    notes = _install_notes(helm, sets)
    assert ("native port" in notes) is mapped


def test_endpoint_that_is_not_host_port_fails_with_advice(helm: str) -> None:
    proc = run_helm(helm, ["template", "x", str(SERVER), "--set", "inserter.endpoint=ch.example.com:port/x"],
                    check=False)
    assert proc.returncode != 0
    assert "must be host:port" in proc.stderr


def _install_notes(helm: str, sets: dict[str, str]) -> str:
    args = ["install", "kubenetmon-server", str(SERVER), "--namespace", "kubenetmon-server", "--dry-run=client"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    out = run_helm(helm, args).stdout
    assert "NOTES:" in out
    return out.split("NOTES:", 1)[1]


def test_notes_tell_what_to_check_and_warn_about_missing_identity(helm: str) -> None:
    notes = _install_notes(helm, {})
    assert "rollout status deployment/kubenetmon-server" in notes
    assert "kubenetmon validate --config /etc/kubenetmon/config.yaml" in notes
    assert "kubenetmon-server.kubenetmon-server.svc.cluster.local:4317" in notes
    assert "region, cluster, environment and cloud should all be set" in notes
    assert "inserter.password is empty" in notes
    readme_notes = _install_notes(helm, README_SERVER_SETS)
    assert "should all be set" not in readme_notes and "password is empty" not in readme_notes


def test_otlp_exporter_replaces_clickhouse(render: RenderFn) -> None:
    rendered = render(SERVER, values=OTLP_INSTEAD_OF_CLICKHOUSE)
    pipeline = rendered.configmap_pipeline()
    assert "clickhouse" not in pipeline.get("exporters", {})
    assert pipeline["exporters"]["otlp"]["endpoint"].startswith("otel-collector.")
    assert pipeline["service"]["pipelines"]["flows"]["exporters"] == ["otlp"]
    assert not rendered.of_kind("Secret")
    assert "clickhouse-credentials" not in {v["name"] for v in rendered.pod_spec()["volumes"]}


def test_no_exporter_at_all_fails_with_advice(helm: str) -> None:
    proc = run_helm(helm, ["template", "x", str(SERVER), "--set", "inserter.enabled=false"], check=False)
    assert proc.returncode != 0
    assert "config.exporters.otlp" in proc.stderr


def test_config_value_is_merged_over_the_generated_pipeline(render: RenderFn) -> None:
    rendered = render(SERVER, sets=README_SERVER_SETS, values={
        "config": {"processors": {"k8s_attributes": {"node_flows": "keep"}},
                   "exporters": {"clickhouse": {"timeout": 60}}},
    })
    pipeline = rendered.configmap_pipeline()
    assert pipeline["processors"]["k8s_attributes"]["node_flows"] == "keep"
    assert pipeline["processors"]["k8s_attributes"]["source"] == "kubernetes"  # kept from the generated one
    assert pipeline["exporters"]["clickhouse"]["timeout"] == 60
    assert pipeline["exporters"]["clickhouse"]["endpoint"].startswith("https://abc123.")


def test_health_probes_and_ports_match_the_pipeline(render: RenderFn) -> None:
    rendered = render(SERVER, sets={**README_SERVER_SETS, "healthCheck.port": "13999", "service.port": "4999"})
    pipeline = rendered.configmap_pipeline()
    container = rendered.container("kubenetmon-server")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert pipeline["extensions"]["health_check"]["endpoint"].endswith(f":{ports['health']}")
    assert ports["health"] == 13999
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "health"}
    assert pipeline["service"]["extensions"] == ["health_check"]
    assert pipeline["service"]["telemetry"]["metrics"]["address"].endswith(f":{ports['metrics']}")
    service_ports = {p["name"]: p for p in rendered.one("Service")["spec"]["ports"]}
    assert service_ports["otlp-grpc"]["port"] == 4999 and service_ports["otlp-grpc"]["targetPort"] == "otlp-grpc"
    assert ports["otlp-grpc"] == 4999
    assert service_ports["metrics"]["targetPort"] == "metrics"
    assert container["args"] == ["run", "--config", "/etc/kubenetmon/config.yaml"]


def test_max_connection_age_reaches_the_receiver_keepalive(render: RenderFn) -> None:
    rendered = render(SERVER, sets={"agentChannel.maxConnectionAge": "2m"})
    keepalive = rendered.configmap_pipeline()["receivers"]["otlp"]["grpc"]["keepalive"]
    assert float(keepalive["max_connection_age"]) == 120.0
    plain = render(SERVER).configmap_pipeline()["receivers"]["otlp"]
    assert "tls" not in plain["grpc"] and "auth" not in plain


def test_gateway_runs_unprivileged_with_a_read_only_root(render: RenderFn) -> None:
    rendered = render(SERVER)
    pod = rendered.pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = rendered.container("kubenetmon-server")["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_replicas_spread_across_hosts(render: RenderFn) -> None:
    soft = render(SERVER).pod_spec()["affinity"]["podAntiAffinity"]
    term = soft["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    hard = render(SERVER, sets={"deployment.podAntiAffinity": "hard"}).pod_spec()["affinity"]["podAntiAffinity"]
    rendered = render(SERVER)
    selector = rendered.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert hard["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"]["matchLabels"] == selector
    assert "affinity" not in render(SERVER, sets={"deployment.podAntiAffinity": "none"}).pod_spec()


def test_scheduling_values_reach_the_pod(render: RenderFn) -> None:
    rendered = render(SERVER, values={
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "regcred"}],
        "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
    })
    pod = rendered.pod_spec()
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == rendered.one("Deployment")["spec"]["selector"]["matchLabels"]


def test_extra_pip_packages_are_installed_onto_pythonpath(render: RenderFn) -> None:
    rendered = render(SERVER, values={"extraPipPackages": ["kubenetmon-nat-gateway==0.1.0", "other-plugin"]})
    pod = rendered.pod_spec()
    (init,) = pod["initContainers"]
    assert init["args"][-2:] == ["kubenetmon-nat-gateway==0.1.0", "other-plugin"]
    target = init["command"][init["command"].index("--target") + 1]
    init_mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    main = rendered.container("kubenetmon-server")
    main_mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert init_mounts["plugins"] == target == main_mounts["plugins"] == env["PYTHONPATH"]
    assert {v["name"]: v for v in pod["volumes"]}["plugins"] == {"name": "plugins", "emptyDir": {}}
    assert "initContainers" not in render(SERVER).pod_spec()


def test_agent_channel_tls_and_token_are_wired(render: RenderFn) -> None:
    tls = next(s for s in SERVER_SCENARIOS if s.name == "tls")
    rendered = render(SERVER, sets=tls.sets)
    container = rendered.container("kubenetmon-server")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in rendered.pod_spec()["volumes"]}
    assert volumes["agent-tls"]["secret"]["secretName"] == "kubenetmon-gateway-tls"
    receiver = rendered.configmap_pipeline()["receivers"]["otlp"]
    assert str(receiver["grpc"]["tls"]["cert_file"]).startswith(mounts["agent-tls"] + "/")
    assert str(receiver["grpc"]["tls"]["key_file"]).startswith(mounts["agent-tls"] + "/")
    assert receiver["auth"]["bearer_token"] == "${env:KUBENETMON_AGENT_TOKEN}"
    token_env = next(e for e in container["env"] if e["name"] == "KUBENETMON_AGENT_TOKEN")
    secret_name = token_env["valueFrom"]["secretKeyRef"]["name"]
    (token_secret,) = [s for s in rendered.of_kind("Secret") if s["metadata"]["name"] == secret_name]
    assert base64.b64decode(token_secret["data"]["token"]).decode() == "agent-token-value"
    assert "agent-token-value" not in rendered.one("ConfigMap")["data"]["config.yaml"]


def test_connection_flags_processor_runs_after_cloud_prefix_only_when_configured(render: RenderFn) -> None:
    scenario = next(s for s in SERVER_SCENARIOS if s.name == "connection-flags")
    pipeline = render(SERVER, sets=scenario.sets, values=scenario.values).configmap_pipeline()
    assert pipeline["service"]["pipelines"]["flows"]["processors"] == [
        "k8s_attributes", "cloud_prefix", "connection_flags"]
    flags = pipeline["processors"]["connection_flags"]
    assert flags["flags"] == {"NAT_GATEWAY": ["0.0.0.0/0"]}
    assert flags["rules"][0]["remote_ports"] == [9092, "9093-9094"]
    plain = render(SERVER).configmap_pipeline()
    assert "connection_flags" not in plain["processors"]
    assert "connection_flags" not in plain["service"]["pipelines"]["flows"]["processors"]


@pytest.mark.slow
def test_plugin_installed_by_the_init_container_is_found_by_the_gateway(render: RenderFn, tmp_path: Path) -> None:
    """Replays the rendered initContainer (pip into the plugins emptyDir) with the repository's
    example plugin, then validates a pipeline using its processor with the gateway's env."""
    plugin = tmp_path / "kubenetmon-nat-gateway"
    shutil.copytree(REPO / "examples" / "kubenetmon-nat-gateway", plugin,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    rendered = render(SERVER, sets=README_SERVER_SETS, values={
        "extraPipPackages": [str(plugin)],
        "config": {"processors": {"nat_gateway": {"remote_cidrs": ["0.0.0.0/0"]}},
                   "service": {"pipelines": {"flows": {
                       "processors": ["k8s_attributes", "cloud_prefix", "nat_gateway"]}}}},
    })
    (init,) = rendered.pod_spec()["initContainers"]
    command = [*init["command"], *init["args"]]
    assert command[0] == "python"
    target = command[command.index("--target") + 1]
    local_target = tmp_path / "plugins"
    command = [sys.executable, *(str(local_target) if part == target else part for part in command[1:])]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # Only the plugin lands there, not a second copy of kubenetmon.
    assert not (local_target / "kubenetmon").exists()
    env = {e["name"]: e["value"] for e in rendered.container("kubenetmon-server")["env"] if "value" in e}
    assert env["PYTHONPATH"] == target
    kubenetmon_validate(rendered.configmap_pipeline(), tmp_path, {"PYTHONPATH": str(local_target)})


def test_insert_queue_is_on_a_writable_pod_volume(render: RenderFn) -> None:
    rendered = render(SERVER, sets=README_SERVER_SETS)
    queue = rendered.configmap_pipeline()["exporters"]["clickhouse"]["sending_queue"]
    assert queue["storage"] == "persistent"
    mounts = {m["mountPath"]: m for m in rendered.container("kubenetmon-server")["volumeMounts"]}
    mount = next(m for path, m in mounts.items() if queue["directory"].startswith(path + "/"))
    assert not mount.get("readOnly", False)
    volumes = {v["name"]: v for v in rendered.pod_spec()["volumes"]}
    assert volumes[mount["name"]] == {"name": mount["name"], "emptyDir": {}}
    memory = render(SERVER, sets={**README_SERVER_SETS, "inserter.persistentQueue": "false"})
    assert "sending_queue" not in memory.configmap_pipeline()["exporters"]["clickhouse"]
