"""The real metering pipeline over a :class:`MiniCluster`: one agent per node, one gateway, chDB.

Every process is a real ``kubenetmon run`` with the shipped configs
(``config/agent.yaml``, ``config/gateway.yaml``) when they are found next to
the package (a source checkout), plus a small overlay file with what a test
or the demo chooses (1 s intervals, short batch waits, local paths). Without
shipped configs (an installed wheel) equivalent generated ones are used.

Agents run in the root namespace and read their node's conntrack table
through the receiver's ``netns`` option; they talk to the gateway on
127.0.0.1. The gateway writes into chDB at ``<work_dir>/chdb``; chDB allows
one process per path, so :meth:`MeteringPipeline.query` opens it only after
the gateway has stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubenetmon.demo.minicluster import MiniCluster
from kubenetmon.demo.processes import KubenetmonProcess, ProcessSet, free_port, scrape_metric, wait_until_ready

__all__ = ["MeteringPipeline", "PipelineSettings", "query_chdb", "write_aws_ranges", "write_static_inventory"]

REPO_CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@dataclass(frozen=True)
class PipelineSettings:
    """What a run chooses; everything else is the shipped configs' defaults."""

    interval: float = 1.0  # agent dump interval (seconds)
    batch_wait: float = 1.0  # gateway → ClickHouse block age (seconds)
    retry_initial: float = 0.5  # first retry wait of both exporters
    retry_max: float = 2.0
    checkpoints: bool = True  # agents keep a state file: exact across restarts, kill -9 included
    log_level: str = "info"
    metrics: bool = False  # serve each process's /metrics on a free 127.0.0.1 port (benchmarks)
    shipped_configs: bool = True  # config/{agent,gateway}.yaml when present; False: generated ones


def write_aws_ranges(directory: Path, prefixes: Sequence[tuple[str, str, str]]) -> Path:
    """Write a small document in AWS's ``ip-ranges.json`` format: (prefix, region, service) entries."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "aws-ip-ranges.json"
    v4 = [p for p in prefixes if ":" not in p[0]]
    v6 = [p for p in prefixes if ":" in p[0]]
    path.write_text(json.dumps({
        "syncToken": "1753388594",
        "createDate": "2025-07-24-20-23-14",
        "prefixes": [{"ip_prefix": p, "region": r, "service": s, "network_border_group": r} for p, r, s in v4],
        "ipv6_prefixes": [{"ipv6_prefix": p, "region": r, "service": s, "network_border_group": r}
                          for p, r, s in v6],
    }, indent=1))
    return path


def write_static_inventory(cluster: MiniCluster, path: Path) -> Path:
    """The cluster's nodes and pods in the ``static`` inventory format of ``k8s_attributes``."""
    doc = {
        "nodes": [{"name": n.name, "zone": n.zone, "addresses": [n.ipv4, n.ipv6]} for n in cluster.nodes.values()],
        "pods": [
            {"name": p.name, "namespace": p.namespace, "node": p.node, "ips": p.ips, "labels": p.labels}
            for p in cluster.pods.values()
        ],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)  # the source polls the file: never let it see half of one
    return path


_CHILD_QUERY = """
import json, sys
import clickhouse_connect
client = clickhouse_connect.get_client(interface="chdb", path=sys.argv[1])
try:
    print(json.dumps([list(r) for r in client.query(sys.argv[2]).result_rows], default=str))
finally:
    client.close()
"""


def query_chdb(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run one query against a chDB data path no other process holds; returns the rows.

    In this process when it can; chDB holds one data path per process, so
    when this process already has another one open (a test suite that
    also runs in-process exporters) the query runs in a child process and
    values other than numbers and strings come back as text.
    """
    import clickhouse_connect

    try:
        client = clickhouse_connect.get_client(interface="chdb", path=str(path))
    except Exception as exc:
        if "already initialized" not in str(exc):
            raise
        done = subprocess.run([sys.executable, "-c", _CHILD_QUERY, str(path), sql],
                              capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"query of {path} in a child process failed: {done.stderr.strip()}") from exc
        return [tuple(row) for row in json.loads(done.stdout)]
    try:
        return [tuple(row) for row in client.query(sql).result_rows]
    finally:
        client.close()


@dataclass
class MeteringPipeline:
    """Gateway and agents for one mini-cluster; :meth:`close` stops them all.

    ``attribution`` is the ``k8s_attributes`` source config: ``{"source":
    "kubernetes", "kubernetes": {"kubeconfig": …}}`` (tests, against the
    loopback API server) or ``{"source": "static", "static": {"path": …}}``
    (the demo).
    """

    cluster: MiniCluster
    work_dir: Path
    attribution: Mapping[str, Any]
    ranges_file: Path
    settings: PipelineSettings = field(default_factory=PipelineSettings)

    def __post_init__(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.chdb_path = self.work_dir / "chdb"
        self.gateway_port = free_port()
        self.health_ports: dict[str, int] = {}  # process name -> its health_check port
        self.metrics_ports: dict[str, int] = {}  # process name -> its /metrics port (settings.metrics)
        self.processes = ProcessSet(self.work_dir / "logs")

    # --- configs --------------------------------------------------------------------

    def _metrics_address(self, name: str) -> str:
        if not self.settings.metrics:
            return ""
        port = self.metrics_ports.setdefault(name, free_port())
        return f"127.0.0.1:{port}"

    def _health_port(self, name: str) -> int:
        if name not in self.health_ports:
            self.health_ports[name] = free_port()
        return self.health_ports[name]

    def _retry(self) -> dict[str, Any]:
        s = self.settings
        return {"initial_interval": s.retry_initial, "max_interval": s.retry_max, "max_elapsed_time": 0}

    def _shipped(self, role: str) -> Path | None:
        path = REPO_CONFIG_DIR / f"{role}.yaml"
        return path if self.settings.shipped_configs and path.exists() else None

    def _gateway_state(self) -> Path:
        return self.work_dir / "gateway"

    def _agent_state(self, node: str) -> Path:
        return self.work_dir / f"agent-{node}"

    # The shipped configs take every operator setting from the environment:
    # these are the values a run sets there, exactly as a Deployment or a
    # DaemonSet would.

    def gateway_env(self) -> dict[str, str]:
        s, topo = self.settings, self.cluster.topology
        env = {
            "OTLP_GRPC_ENDPOINT": f"127.0.0.1:{self.gateway_port}",
            "K8S_SOURCE": str(self.attribution.get("source", "kubernetes")),
            "CLICKHOUSE_ENDPOINT": f"chdb://{self.chdb_path}",
            "KUBENETMON_STATE_DIR": str(self._gateway_state()),
            "CLOUD_RANGES_DIR": str(self.ranges_file.parent),
            "CLOUD_RANGES_CACHE_DIR": str(self._gateway_state() / "cloud-ranges"),
            "CLOUD_RANGES_OFFLINE": "true",
            "CLOUD": topo.cloud, "REGION": topo.region, "CLUSTER": topo.cluster, "ENVIRONMENT": "e2e",
            "HEALTH_CHECK_ADDRESS": f"127.0.0.1:{self._health_port('gateway')}",
            "LOG_LEVEL": s.log_level,
        }
        kubeconfig = self.attribution.get("kubernetes", {}).get("kubeconfig")
        if kubeconfig:
            env["KUBECONFIG"] = str(kubeconfig)  # what `kubectl` would use: the loopback API server
        if s.metrics:
            env["METRICS_ADDRESS"] = self._metrics_address("gateway")
        return env

    def gateway_overlay(self) -> dict[str, Any]:
        """What the environment cannot say: test-speed waits, and only the AWS range file exists."""
        s = self.settings
        attribution = {k: v for k, v in self.attribution.items() if k != "source"}
        if "kubernetes" in attribution:
            attribution["kubernetes"] = {k: v for k, v in attribution["kubernetes"].items() if k != "kubeconfig"}
        overlay: dict[str, Any] = {
            "processors": {
                "k8s_attributes": attribution,
                "cloud_prefix": {"sources": {name: {"enabled": False} for name in ("gcp", "google", "azure")}},
            },
            "exporters": {"clickhouse": {"batch": {"max_wait": s.batch_wait, "align": False},
                                         "retry_on_failure": self._retry()}},
            "service": {"shutdown_timeout": 20},
        }
        if not s.metrics:
            overlay["service"]["telemetry"] = {"metrics": {"address": ""}}
        return overlay

    def agent_env(self, node: str) -> dict[str, str]:
        s, name = self.settings, f"agent-{node}"
        env = {
            "NODE_NAME": node,
            "COLLECTION_INTERVAL_SECONDS": f"{s.interval:g}",
            "KUBENETMON_STATE_DIR": str(self._agent_state(node)),
            "KUBENETMON_GATEWAY_ENDPOINT": f"127.0.0.1:{self.gateway_port}",
            "KUBENETMON_GATEWAY_INSECURE": "true",
            # Fresh namespaces have no counters yet: nothing to sanity-check.
            "SKIP_CONNTRACK_SANITY_CHECK": "true",
            "HEALTH_CHECK_ADDRESS": f"127.0.0.1:{self._health_port(name)}",
            "LOG_LEVEL": s.log_level,
        }
        if s.metrics:
            env["METRICS_ADDRESS"] = self._metrics_address(name)
        return env

    def agent_overlay(self, node: str) -> dict[str, Any]:
        """What a real node does not need: which namespace is "the node", and test-speed retries."""
        s = self.settings
        conntrack: dict[str, Any] = {"netns": self.cluster.nodes[node].netns.name}
        if not s.checkpoints:
            conntrack["checkpoint_path"] = None
        overlay: dict[str, Any] = {
            "receivers": {"conntrack": conntrack},
            "exporters": {"otlp": {"retry_on_failure": self._retry()}},
            "service": {"shutdown_timeout": 15},
        }
        if not s.metrics:
            overlay["service"]["telemetry"] = {"metrics": {"address": ""}}
        return overlay

    def gateway_config(self) -> dict[str, Any]:
        """The whole gateway config, for when the shipped one is not at hand (an installed wheel)."""
        s, topo = self.settings, self.cluster.topology
        return {
            "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{self.gateway_port}"}}},
            "processors": {
                "k8s_attributes": dict(self.attribution),
                "cloud_prefix": {
                    "sources": {
                        "aws": {"file": str(self.ranges_file), "url": ""},
                        "gcp": {"enabled": False}, "google": {"enabled": False},
                        "azure": {"enabled": False}, "oracle": {"enabled": False},
                    },
                    "offline": True,
                },
            },
            "exporters": {
                "clickhouse": {
                    "endpoint": f"chdb://{self.chdb_path}",
                    "batch": {"max_wait": s.batch_wait, "align": False},
                    "sending_queue": {"storage": "persistent",
                                      "directory": str(self._gateway_state() / "clickhouse-queue")},
                    "retry_on_failure": self._retry(),
                },
            },
            "extensions": {"health_check": {"endpoint": f"127.0.0.1:{self._health_port('gateway')}"}},
            "service": {
                "extensions": ["health_check"],
                "pipelines": {"flows": {"receivers": ["otlp"], "processors": ["k8s_attributes", "cloud_prefix"],
                                        "exporters": ["clickhouse"]}},
                "telemetry": {"metrics": {"address": self._metrics_address("gateway")},
                              "logs": {"level": s.log_level}},
                "identity": {"cloud": topo.cloud, "region": topo.region, "cluster": topo.cluster,
                             "environment": "e2e"},
                "shutdown_timeout": 20,
            },
        }

    def agent_config(self, node: str) -> dict[str, Any]:
        """The whole agent config, for when the shipped one is not at hand (an installed wheel)."""
        s = self.settings
        state = self._agent_state(node)
        conntrack: dict[str, Any] = {
            "node_name": node,
            "netns": self.cluster.nodes[node].netns.name,
            "interval": s.interval,
            "skip_sanity_check": True,
        }
        if s.checkpoints:
            conntrack["checkpoint_path"] = str(state / "conntrack.checkpoint")
        return {
            "receivers": {"conntrack": conntrack},
            "exporters": {
                "otlp": {
                    "endpoint": f"127.0.0.1:{self.gateway_port}",
                    "tls": {"insecure": True},
                    "compression": "gzip",
                    "arrow": {"enabled": True},  # as config/agent.yaml: OTAP, OTLP Export as the fallback
                    "sending_queue": {"storage": "persistent", "directory": str(state / "queue"),
                                      "full_policy": "block"},
                    "retry_on_failure": self._retry(),
                    "batch": {"max_wait": 0},
                },
            },
            "extensions": {"health_check": {"endpoint": f"127.0.0.1:{self._health_port(f'agent-{node}')}"}},
            "service": {
                "extensions": ["health_check"],
                "pipelines": {"flows": {"receivers": ["conntrack"], "exporters": ["otlp"]}},
                "telemetry": {"metrics": {"address": self._metrics_address(f"agent-{node}")},
                              "logs": {"level": s.log_level}},
                "shutdown_timeout": 15,
            },
        }

    def gateway_launch(self) -> tuple[list[Path], dict[str, str]]:
        """Config files and environment of the gateway: shipped + overlay + env, or a generated whole."""
        shipped = self._shipped("gateway")
        if shipped is None:
            return [self._write("gateway", self.gateway_config())], {}
        return [shipped, self._write("gateway-overlay", self.gateway_overlay())], self.gateway_env()

    def agent_launch(self, node: str) -> tuple[list[Path], dict[str, str]]:
        """Config files and environment of a node's agent (see :meth:`gateway_launch`)."""
        shipped = self._shipped("agent")
        if shipped is None:
            return [self._write(f"agent-{node}", self.agent_config(node))], {"NODE_NAME": node}
        return [shipped, self._write(f"agent-{node}-overlay", self.agent_overlay(node))], self.agent_env(node)

    def _write(self, name: str, doc: Mapping[str, Any]) -> Path:
        path = self.work_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(dict(doc), sort_keys=False))
        return path

    # --- processes ------------------------------------------------------------------

    def start_gateway(self, *, wait: bool = True) -> KubenetmonProcess:
        """Start (or restart) the gateway; with ``wait``, until it reports ready."""
        configs, env = self.gateway_launch()
        proc = self.processes.spawn("gateway", configs, env, log_level=self.settings.log_level)
        if wait:
            wait_until_ready(self.health_ports["gateway"], proc)
        return proc

    def start_agent(self, node: str, *, wait: bool = True) -> KubenetmonProcess:
        """Start (or restart) a node's agent; with ``wait``, until it reports ready (first dump taken)."""
        configs, env = self.agent_launch(node)
        proc = self.processes.spawn(f"agent-{node}", configs, env, log_level=self.settings.log_level)
        if wait:
            wait_until_ready(self.health_ports[proc.name], proc)
        return proc

    def start(self) -> MeteringPipeline:
        """Gateway first (agents queue until it answers anyway), then every agent; all ready on return."""
        self.start_gateway()
        agents = [self.start_agent(node, wait=False) for node in self.cluster.nodes]
        for proc in agents:
            wait_until_ready(self.health_ports[proc.name], proc)
        return self

    def agent(self, node: str) -> KubenetmonProcess:
        return self.processes[f"agent-{node}"]

    @property
    def gateway(self) -> KubenetmonProcess:
        return self.processes["gateway"]

    def stop(self) -> None:
        """Stop agents (they drain into the gateway), then the gateway (it flushes into chDB)."""
        self.processes.close()

    close = stop

    def __enter__(self) -> MeteringPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def metric(self, process: str, name: str) -> float:
        """A metric of one process (``gateway``, ``agent-<node>``); needs ``settings.metrics``."""
        if process not in self.metrics_ports:
            raise RuntimeError(f"{process} serves no metrics: run with PipelineSettings(metrics=True)")
        return scrape_metric(self.metrics_ports[process], name)

    def logs(self) -> str:
        return "\n".join(f"----- {p.name}\n{p.log_tail(60)}" for p in self.processes.processes.values())

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if any(p.alive for p in self.processes.processes.values() if p.name == "gateway"):
            raise RuntimeError("stop the gateway first: chDB allows one process per data path")
        return query_chdb(self.chdb_path, sql)
