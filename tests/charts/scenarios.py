"""Values scenarios every chart is rendered with (× Kubernetes versions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.charts.helm import README_AGENT_SETS, README_SERVER_SETS


@dataclass(frozen=True)
class Scenario:
    name: str
    sets: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] | None = None
    api_versions: tuple[str, ...] = ()
    # Environment the rendered pipeline needs for `kubenetmon validate` (the pod sets these).
    env: dict[str, str] = field(default_factory=dict)


OTLP_INSTEAD_OF_CLICKHOUSE: dict[str, Any] = {
    "inserter": {"enabled": False},
    "config": {
        "exporters": {"otlp": {"endpoint": "otel-collector.observability.svc.cluster.local:4317"}},
        "service": {"pipelines": {"flows": {"exporters": ["otlp"]}}},
    },
}

SERVER_SCENARIOS = (
    Scenario("defaults"),
    Scenario("readme", sets=README_SERVER_SETS),
    Scenario(
        "tls",
        sets={
            **README_SERVER_SETS,
            "agentChannel.tls.enabled": "true",
            "agentChannel.tls.secretName": "kubenetmon-gateway-tls",
            "agentChannel.token.enabled": "true",
            "agentChannel.token.value": "agent-token-value",
            "inserter.caSecret": "clickhouse-ca",
        },
        env={"KUBENETMON_AGENT_TOKEN": "agent-token-value"},
    ),
    Scenario("otlp-exporter", sets={"region": "us-west-2", "cloud": "aws"}, values=OTLP_INSTEAD_OF_CLICKHOUSE),
    Scenario(
        "connection-flags",
        sets=README_SERVER_SETS,
        values={"connectionFlags": {
            "flags": {"NAT_GATEWAY": ["0.0.0.0/0"]},
            "rules": [{"flag": "TO_KAFKA", "remote_namespaces": ["kafka"], "remote_ports": [9092, "9093-9094"]}],
        }},
    ),
    Scenario(
        "owners",
        sets={**README_SERVER_SETS, "attribution.owners": "true", "deployment.replicaCount": "3",
              "deployment.podAntiAffinity": "hard", "extraPipPackages[0]": "kubenetmon-nat-gateway==0.1.0"},
    ),
)

AGENT_SCENARIOS = (
    Scenario("defaults", env={"NODE_NAME": "node-a"}),
    Scenario("readme", sets=README_AGENT_SETS, env={"NODE_NAME": "node-a"}),
    Scenario(
        "tls",
        sets={
            **README_AGENT_SETS,
            "gateway.tls.enabled": "true",
            "gateway.tls.caSecret": "kubenetmon-gateway-ca",
            "gateway.token.enabled": "true",
            "gateway.token.value": "agent-token-value",
            "configuration.kubenetmonServerServiceHost": "gw.monitoring.svc.cluster.local",
        },
        env={"NODE_NAME": "node-a", "KUBENETMON_AGENT_TOKEN": "agent-token-value"},
    ),
    Scenario(
        "operator-sysctls",
        sets={"configuration.sysctls": "operator", "priorityClass.enabled": "false",
              "priorityClass.name": "system-node-critical"},
        env={"NODE_NAME": "node-a"},
    ),
)

MONITORING_API = "monitoring.coreos.com/v1"
