"""Two gateway replicas behind one address, one ClickHouse: totals stay exact when a replica dies.

Real parts: two ``kubenetmon run`` gateway processes (otlp receiver →
k8s_attributes with a static inventory → clickhouse exporter with a
no queue of its own), a ClickHouse reached over HTTP (tests/fixtures/
clickhouse_http.py, executing on chDB) shared by both, and an agent — the
real ``otlp`` exporter — sending recorded conntrack batches, each named by
its producer's batch id as the conntrack receiver names them.

One address: a small TCP balancer in front of the replicas, as a Service's
ClusterIP is (a new connection goes to the next replica that accepts it).
It can also swallow a replica's answers: the replica accepted and handled a
request but the agent never hears so — the acknowledgement is lost.

The failures (docs/scaling.md, "What is exact under which failure"):

* a replica inserts an agent batch, is ``kill -9``'d before its answer gets
  through, its storage is removed; the agent retries the batch to the other
  replica. ClickHouse must count it once: both inserts have to carry the same
  ``insert_deduplication_token``, derived from the agent's batch id.
* ClickHouse refuses inserts for a while; a replica holding an agent batch is
  deleted with its storage. Nothing may be lost: the replica must not
  acknowledge the batch before it is durable in ClickHouse, so that the agent
  still holds it and retries it elsewhere.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubenetmon.component import Kind
from kubenetmon.demo.processes import KubenetmonProcess, ProcessSet, free_port, scrape_metric, wait_until_ready
from kubenetmon.exporters.otlp import OtlpExporter, OtlpExporterConfig
from kubenetmon.flows import ConntrackRecord, FlowBatch
from kubenetmon.testing import StaticHost, create_settings
from tests.fixtures.clickhouse_http import ClickHouseHTTP, clickhouse_http

SECOND = 1_000_000_000
CLIENT, SERVER = "10.0.0.1", "10.0.1.2"

INVENTORY = {
    "nodes": [
        {"name": "node-a", "addresses": ["10.0.0.254"], "zone": "us-west-2a"},
        {"name": "node-b", "addresses": ["10.0.1.254"], "zone": "us-west-2b"},
    ],
    "pods": [
        {"name": "client-1", "namespace": "shop", "node": "node-a", "ips": [CLIENT],
         "labels": {"app.kubernetes.io/name": "client"}},
        {"name": "server-1", "namespace": "shop", "node": "node-b", "ips": [SERVER],
         "labels": {"app.kubernetes.io/name": "server"}},
    ],
}


# --- one address in front of the replicas ------------------------------------------------


class TcpBalancer:
    """127.0.0.1:``port`` → the replicas, round robin per connection, skipping dead ones."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._next = 0
        self._lock = threading.Lock()
        self.swallowed: set[int] = set()  # indexes of replicas whose answers are dropped
        self.routed: list[int] = []  # the replica each connection went to
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="balancer", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._route, args=(client,), daemon=True).start()

    def _route(self, client: socket.socket) -> None:
        for _ in range(len(self.backends)):
            with self._lock:
                index = self._next % len(self.backends)
                self._next += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", self.backends[index]), timeout=1.0)
            except OSError:
                continue
            upstream.settimeout(None)
            with self._lock:
                self.routed.append(index)
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            self._pump(upstream, client, index)
            return
        client.close()

    def _pump(self, source: socket.socket, sink: socket.socket, replica: int | None) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if replica is not None and replica in self.swallowed:
                    continue  # the replica answered; the agent never hears it
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._server.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


# --- the deployment ----------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    process: KubenetmonProcess
    port: int
    health_port: int
    metrics_port: int
    state: Path

    def metric(self, name: str) -> float:
        return scrape_metric(self.metrics_port, name)


def gateway_config(ch: ClickHouseHTTP, inventory: Path, state: Path, *, port: int, health: int,
                   metrics: int) -> dict[str, Any]:
    return {
        "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{port}"}}},
        "processors": {"k8s_attributes": {"source": "static", "static": {"path": str(inventory)}}},
        "exporters": {
            "clickhouse": {
                "endpoint": ch.dsn(),
                "create_schema": True,
                "timeout": 5,
                # Scaled out (docs/scaling.md): no gateway queue; an agent batch is acknowledged
                # once it is in ClickHouse, and inserted under a token from its agent batch id.
                "sending_queue": {"enabled": False},
                "batch": {"max_wait": 0, "align": False},
                "retry_on_failure": {"initial_interval": 0.2, "max_interval": 0.5, "randomization_factor": 0},
            },
        },
        "extensions": {"health_check": {"endpoint": f"127.0.0.1:{health}"}},
        "service": {
            "extensions": ["health_check"],
            "pipelines": {"flows": {"receivers": ["otlp"], "processors": ["k8s_attributes"],
                                    "exporters": ["clickhouse"]}},
            "telemetry": {"metrics": {"address": f"127.0.0.1:{metrics}"}},
            "identity": {"cloud": "aws", "region": "us-west-2", "cluster": "c1", "environment": "e2e"},
            "shutdown_timeout": 10,
        },
    }


@dataclass
class Deployment:
    ch: ClickHouseHTTP
    replicas: list[Replica]
    balancer: TcpBalancer
    agents: list[OtlpExporter]

    def agent(self) -> OtlpExporter:
        config = OtlpExporterConfig.model_validate({
            # gRPC shares one connection between channels of equal arguments in a
            # process; a distinct value gives each agent its own, as separate nodes have.
            "keepalive_time": 30 + len(self.agents),
            "endpoint": f"127.0.0.1:{self.balancer.port}",
            "tls": {"insecure": True},
            "timeout": 2.0,
            "reconnect_backoff_max": 0.2,
            "batch": {"max_wait": 0},
            "retry_on_failure": {"initial_interval": 0.2, "max_interval": 0.5, "max_elapsed_time": 120,
                                 "randomization_factor": 0},
        })
        agent = OtlpExporter(create_settings(Kind.EXPORTER, "otlp"), config)
        agent.start(StaticHost())
        self.agents.append(agent)
        return agent

    def totals(self) -> dict[str, int]:
        rows = self.ch.query("SELECT direction, sum(bytes) FROM default.network_flows_0 GROUP BY direction")
        return {str(d): int(b) for d, b in rows}


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(INVENTORY))
    with clickhouse_http(tmp_path / "clickhouse") as ch, ProcessSet(tmp_path / "logs") as processes:
        replicas = []
        for name in ("gateway-a", "gateway-b"):
            port, health, metrics = free_port(), free_port(), free_port()
            state = tmp_path / name
            config = tmp_path / f"{name}.yaml"
            settings = gateway_config(ch, inventory, state, port=port, health=health, metrics=metrics)
            config.write_text(yaml.safe_dump(settings))
            process = processes.spawn(name, [config], env={})
            replicas.append(Replica(name, process, port, health, metrics, state))
        for replica in replicas:
            wait_until_ready(replica.health_port, replica.process)
        balancer = TcpBalancer([r.port for r in replicas])
        deployment = Deployment(ch, replicas, balancer, [])
        try:
            yield deployment
        finally:
            for agent in deployment.agents:
                agent.shutdown(2.0)
            balancer.close()


def recorded_batch(seq: int, original: int, reply: int) -> FlowBatch:
    """One agent interval as the conntrack receiver produces it: node-a saw client → server."""
    end = (int(time.time()) - 120 + seq) * SECOND
    record = ConntrackRecord(
        "node-a", "tcp", "ipv4", CLIENT, 40000 + seq, SERVER, 8080, SERVER, 8080, CLIENT, 40000 + seq,
        original_bytes=original, original_packets=1, reply_bytes=reply, reply_packets=1,
        start_ns=end - 5 * SECOND, end_ns=end,
    )
    return FlowBatch(records=[record], batch_id=f"node-a-{seq:06d}")


def wait_until(predicate: Any, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def delete_pod(replica: Replica) -> None:
    """A pod deleted, not restarted: the process is gone and so is its storage (an emptyDir)."""
    replica.process.kill()
    shutil.rmtree(replica.state, ignore_errors=True)


# --- the tests ---------------------------------------------------------------------------

def test_two_replicas_behind_one_address_store_every_batch_once(deployment: Deployment) -> None:
    agents = [deployment.agent(), deployment.agent()]  # two connections: one per replica
    sent = {"out": 0, "in": 0}
    for seq in range(20):
        batch = recorded_batch(seq, 1000 + seq, 10 + seq)
        agents[seq % 2].consume(batch)
        sent["out"] += 1000 + seq
        sent["in"] += 10 + seq
    wait_until(lambda: deployment.totals() == sent, what=f"totals {sent}")
    assert sorted(set(deployment.balancer.routed)) == [0, 1], "both replicas took traffic"
    assert all(r.metric("kubenetmon_receiver_accepted_records_total") > 0 for r in deployment.replicas)


def test_batch_retried_to_another_replica_after_a_lost_answer_is_stored_once(deployment: Deployment) -> None:
    a, b = deployment.replicas
    agent = deployment.agent()
    agent.consume(recorded_batch(0, 500, 50))
    wait_until(lambda: deployment.totals() == {"out": 500, "in": 50}, what="the first batch")
    assert deployment.balancer.routed == [0]  # the agent's connection goes to replica A

    deployment.balancer.swallowed.add(0)  # A's answers are lost from now on
    inserts = deployment.ch.stats()["inserts"]
    agent.consume(recorded_batch(1, 7000, 700))
    wait_until(lambda: deployment.ch.stats()["inserts"] > inserts, what="replica A inserting the batch")
    delete_pod(a)  # kill -9 before its answer got through; storage gone

    wait_until(lambda: agent.m_sent.value() == 2, what="the agent's retry to replica B")
    assert deployment.balancer.routed[-1] == 1
    wait_until(lambda: b.metric("kubenetmon_clickhouse_blocks_inserted_total") >= 1, what="B's insert")
    time.sleep(1.0)  # a double would be visible by now
    assert deployment.totals() == {"out": 7500, "in": 750}
    by_a, by_b = deployment.ch.stats()["insert_tokens"][-2:]
    assert by_a == by_b and "node-a-000001" in by_a  # one token, from the agent's batch id


def test_replica_deleted_while_clickhouse_refuses_inserts_loses_nothing(deployment: Deployment) -> None:
    a, _ = deployment.replicas
    agent = deployment.agent()
    agent.consume(recorded_batch(0, 500, 50))
    wait_until(lambda: deployment.totals() == {"out": 500, "in": 50}, what="the first batch")

    deployment.ch.fault("status", count=10_000, match="INSERT", status=503, code=202,
                        message="Too many simultaneous queries. (TOO_MANY_SIMULTANEOUS_QUERIES)")
    agent.consume(recorded_batch(1, 9000, 900))
    wait_until(lambda: a.metric("kubenetmon_receiver_accepted_records_total") >= 2
               or a.metric("kubenetmon_receiver_refused_points_total") >= 1, what="A handling the batch")
    time.sleep(1.0)  # A tries ClickHouse, which refuses
    delete_pod(a)
    deployment.ch.clear_faults()  # ClickHouse takes inserts again

    wait_until(lambda: deployment.totals() == {"out": 9500, "in": 950}, timeout=45,
               what="the batch A held, delivered through B")
