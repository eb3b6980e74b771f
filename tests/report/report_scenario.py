"""A small cluster's minute of traffic, as flows, and the same traffic as plain rows.

Every connection is listed once (client → server, with bytes each way); the
flows are derived from it from each local endpoint's point of view, as
``k8s_attributes`` would. Tests compute expected answers from :func:`rows`
in Python and compare them with what the SQL returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubenetmon.flows import Endpoint, Flow
from tests.exporters.clickhouse.clickhouse_testkit import SECOND, T0_NS


def pod(ns: str, app: str, name: str, *, node: str, zone: str, ip: str) -> Endpoint:
    return Endpoint(address=ip, pod=name, namespace=ns, app=app, node=node, availability_zone=zone,
                    cloud="aws", region="us-west-2")


WEB1 = pod("shop", "web", "web-1", node="node-1", zone="us-west-2a", ip="10.0.0.11")
API1 = pod("shop", "api", "api-1", node="node-2", zone="us-west-2b", ip="10.0.0.21")
API2 = pod("shop", "api", "api-2", node="node-1", zone="us-west-2a", ip="10.0.0.22")
API3 = pod("shop", "api", "api-3", node="node-3", zone="us-west-2b", ip="10.0.0.23")
DB1 = pod("data", "", "db-1", node="node-3", zone="us-west-2b", ip="10.0.0.31")
CACHE1 = pod("data", "cache", "cache-1", node="node-2", zone="us-west-2a", ip="10.0.0.41")  # only ever a server
S3 = Endpoint(address="52.218.0.1", cloud="aws", region="us-west-2", cloud_service="S3")
DYNAMO = Endpoint(address="52.94.0.1", cloud="aws", region="us-west-2", cloud_service="DYNAMODB")
INTERNET = Endpoint(address="1.2.3.4")


@dataclass(frozen=True)
class Connection:
    client: Endpoint
    client_port: int
    server: Endpoint
    server_port: int
    up: int  # bytes client → server
    down: int  # bytes server → client
    minute: int
    klass: str = "INTRA_VPC"
    flags: tuple[str, ...] = ()  # connectionFlags set true (NAT_GATEWAY: through a managed NAT gateway)


CONNECTIONS = (
    Connection(WEB1, 40001, API1, 8080, 1000, 5000, 0),
    Connection(WEB1, 40002, API2, 8080, 3000, 2000, 0),
    Connection(WEB1, 40003, API1, 8080, 400, 600, 1),
    Connection(WEB1, 40005, API3, 8080, 9000, 100, 1),
    Connection(API1, 50001, INTERNET, 443, 10, 20, 0, "PUBLIC_INTERNET", ("NAT_GATEWAY",)),
    Connection(API2, 45000, DB1, 5432, 700, 9000, 1),
    Connection(WEB1, 40004, S3, 443, 700, 90000, 1, "INTRA_REGION"),
    Connection(DB1, 41000, S3, 443, 123456, 10, 0, "INTRA_REGION", ("NAT_GATEWAY",)),
    Connection(API3, 42000, DYNAMO, 443, 50, 60, 1, "INTRA_REGION"),
    Connection(API1, 46000, CACHE1, 6379, 300, 4000, 0),
    Connection(API2, 46001, CACHE1, 6379, 200, 2500, 1),
    # Far outside the windows the tests use: must never be counted.
    Connection(WEB1, 40009, API1, 8080, 10**9, 10**9, 240),
)


def _with_port(e: Endpoint, port: int) -> Endpoint:
    return Endpoint(**{**{f: getattr(e, f) for f in e.__slots__}, "port": port})  # type: ignore[attr-defined]


def flows() -> list[Flow]:
    out: list[Flow] = []
    for c in CONNECTIONS:
        end = T0_NS + (c.minute * 60 + 30) * SECOND
        client, server = _with_port(c.client, c.client_port), _with_port(c.server, c.server_port)
        views = [(client, server, c.up, c.down)]
        if c.server.pod:
            views.append((server, client, c.down, c.up))
        for local, remote, sent, received in views:
            for direction, n in (("out", sent), ("in", received)):
                out.append(Flow(direction, "tcp", "ipv4", local, remote, n, 1, c.klass,
                                dict.fromkeys(c.flags, True), local.node,
                                end - 5 * SECOND, end))
    return out


def rows() -> list[dict[str, Any]]:
    """The flows as table-like dicts, for computing expectations."""
    return [
        {
            "minute": (f.end_ns - T0_NS) // (60 * SECOND),
            "direction": f.direction, "bytes": f.bytes, "class": f.connection_class,
            "ns": f.local.namespace, "app": f.local.app, "pod": f.local.pod, "node": f.local.node,
            "zone": f.local.availability_zone, "port": f.local.port,
            "r_ns": f.remote.namespace, "r_app": f.remote.app, "r_pod": f.remote.pod,
            "r_zone": f.remote.availability_zone, "r_port": f.remote.port, "r_ip": f.remote.address,
            "r_cloud": f.remote.cloud, "r_region": f.remote.region, "r_service": f.remote.cloud_service,
        }
        for f in flows()
    ]


def workload(r: dict[str, Any]) -> str:
    return r["app"] or r["pod"]


def remote_workload(r: dict[str, Any]) -> str:
    return r["r_app"] or r["r_pod"] or r["r_service"] or r["r_ip"]
