"""The SQL behind ``kubenetmon report``: one query per question of DESIGN §0.

Every query is documented verbatim in ``docs/queries.md`` (a test checks the
text is the same and runs each one against chDB). They use ClickHouse query
parameters, so they run unchanged in ``clickhouse-client``
(``--param_since='2025-01-01 00:00:00' ...``) and take user input without
any string formatting:

* ``{database:Identifier}.{table:Identifier}`` — the table;
* ``{since:DateTime('UTC')}``, ``{until:DateTime('UTC')}`` — the half-open
  window ``[since, until)`` on ``intervalStartTime``, in UTC;
* ``{namespace:String}``, ``{app:String}`` — filters on the local workload;
  an empty string means "any";
* ``{limit:UInt32}``, ``{step:UInt32}`` — row limit, time step in seconds.

The table is a SummingMergeTree: rows of one key may not be merged yet, so
every query aggregates with ``sum()`` rather than reading rows as they are.

Who opened a connection is not stored; the queries that need it
(``initiators``, ``replica-balance``) use the port heuristic: the side with
the higher port is the client (clients use ephemeral ports, 32768–60999 on
Linux; servers listen on lower ones). Flows where either port is 0 are not
classified.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QUERIES", "Query"]


@dataclass(frozen=True)
class Query:
    """One documented question and its SQL."""

    name: str
    title: str
    answers: str  # which DESIGN §0 question
    sql: str
    needs_app: bool = False


_WINDOW = """date >= toDate({since:DateTime('UTC')}) AND date <= toDate({until:DateTime('UTC')})
  AND intervalStartTime >= {since:DateTime('UTC')} AND intervalStartTime < {until:DateTime('UTC')}
  AND ({namespace:String} = '' OR localNamespace = {namespace:String})
  AND ({app:String} = '' OR localApp = {app:String})"""

_LOCAL = "if(localApp != '', localApp, localPod)"
_REMOTE = (
    "multiIf(remoteApp != '', remoteApp, remotePod != '', remotePod, "
    "remoteCloudService != '', remoteCloudService, toString(remoteIPv4))"
)
_CROSS_AZ = (
    "localAvailabilityZone != '' AND remoteAvailabilityZone != ''\n"
    "  AND localAvailabilityZone != remoteAvailabilityZone"
)
_TABLE = "{database:Identifier}.{table:Identifier}"

_QUERIES = (
    Query(
        "cross-az",
        "Cross-availability-zone bytes by workload pair",
        "1. How much cross-AZ traffic do our workloads send, and which are the largest talkers?",
        f"""SELECT
  localNamespace AS namespace,
  {_LOCAL} AS workload,
  localAvailabilityZone AS zone,
  remoteNamespace AS remote_namespace,
  {_REMOTE} AS remote_workload,
  remoteAvailabilityZone AS remote_zone,
  sumIf(bytes, direction = 'out') AS sent_bytes,
  sumIf(bytes, direction = 'in') AS received_bytes
FROM {_TABLE}
WHERE {_WINDOW}
  AND {_CROSS_AZ}
GROUP BY namespace, workload, zone, remote_namespace, remote_workload, remote_zone
ORDER BY sent_bytes + received_bytes DESC, namespace, workload, remote_workload
LIMIT {{limit:UInt32}}""",
    ),
    Query(
        "top-talkers",
        "Top cross-availability-zone talkers",
        "1. How much cross-AZ traffic do our workloads send, and which are the largest talkers?",
        f"""SELECT
  localNamespace AS namespace,
  {_LOCAL} AS workload,
  sumIf(bytes, direction = 'out') AS sent_bytes,
  sumIf(bytes, direction = 'in') AS received_bytes,
  uniqExact({_REMOTE}) AS remote_workloads
FROM {_TABLE}
WHERE {_WINDOW}
  AND {_CROSS_AZ}
GROUP BY namespace, workload
ORDER BY sent_bytes + received_bytes DESC, namespace, workload
LIMIT {{limit:UInt32}}""",
    ),
    Query(
        "by-class",
        "Bytes by connection class",
        "2. How much traffic do we send to S3 (or any cloud service)?",
        f"""SELECT
  connectionClass AS connection_class,
  sumIf(bytes, direction = 'out') AS sent_bytes,
  sumIf(bytes, direction = 'in') AS received_bytes
FROM {_TABLE}
WHERE {_WINDOW}
GROUP BY connection_class
ORDER BY sent_bytes + received_bytes DESC, connection_class""",
    ),
    Query(
        "cloud-services",
        "Bytes by remote cloud service",
        "2. How much traffic do we send to S3 (or any cloud service)?",
        f"""SELECT
  remoteCloud AS cloud,
  remoteCloudService AS service,
  remoteRegion AS region,
  sumIf(bytes, direction = 'out') AS sent_bytes,
  sumIf(bytes, direction = 'in') AS received_bytes,
  uniqExact(localNamespace, {_LOCAL}) AS local_workloads
FROM {_TABLE}
WHERE {_WINDOW}
  AND remoteCloudService != ''
GROUP BY cloud, service, region
ORDER BY sent_bytes + received_bytes DESC, cloud, service, region
LIMIT {{limit:UInt32}}""",
    ),
    Query(
        "initiators",
        "Workloads that open outbound connections, and those that only receive",
        "3. Which workloads open outbound connections, and which only receive?",
        f"""SELECT
  localNamespace AS namespace,
  {_LOCAL} AS workload,
  if(countIf(localPort > remotePort AND remotePort != 0) > 0, 'opens outbound', 'inbound only') AS role,
  uniqExactIf((remoteIPv4, remotePort, {_REMOTE}), localPort > remotePort AND remotePort != 0)
    AS outbound_destinations,
  uniqExactIf((remoteIPv4, {_REMOTE}), localPort < remotePort AND localPort != 0) AS inbound_clients,
  sumIf(bytes, localPort > remotePort AND remotePort != 0) AS outbound_bytes,
  sumIf(bytes, localPort < remotePort AND localPort != 0) AS inbound_bytes
FROM {_TABLE}
WHERE {_WINDOW}
GROUP BY namespace, workload
ORDER BY role DESC, outbound_bytes + inbound_bytes DESC, namespace, workload
LIMIT {{limit:UInt32}}""",
    ),
    Query(
        "replica-balance",
        "Balance of client traffic across the server replicas of one app",
        "4. Are gRPC connections of internal clients balanced across server replicas?",
        f"""SELECT
  localPod AS replica,
  localNode AS node,
  uniqExact(remoteIPv4, remotePort) AS client_connections,
  uniqExact(remoteIPv4) AS clients,
  sum(bytes) AS total_bytes,
  round(total_bytes / sum(total_bytes) OVER (), 4) AS share,
  round(total_bytes / avg(total_bytes) OVER (), 2) AS ratio_to_mean
FROM {_TABLE}
WHERE {_WINDOW}
  AND localPort < remotePort AND localPort != 0
GROUP BY replica, node
ORDER BY total_bytes DESC, replica""",
        needs_app=True,
    ),
    Query(
        "throughput-node",
        "Throughput per node over time",
        "5. What are our throughput needs; are we near instance bandwidth limits?",
        f"""SELECT
  toStartOfInterval(intervalStartTime, toIntervalSecond({{step:UInt32}}), 'UTC') AS time,
  localNode AS node,
  round(8 * sumIf(bytes, direction = 'out') / {{step:UInt32}} / 1e6, 3) AS sent_mbps,
  round(8 * sumIf(bytes, direction = 'in') / {{step:UInt32}} / 1e6, 3) AS received_mbps
FROM {_TABLE}
WHERE {_WINDOW}
GROUP BY time, node
ORDER BY time, node""",
    ),
    Query(
        "throughput-pod",
        "Throughput per pod over time",
        "5. What are our throughput needs; are we near instance bandwidth limits?",
        f"""SELECT
  toStartOfInterval(intervalStartTime, toIntervalSecond({{step:UInt32}}), 'UTC') AS time,
  localNamespace AS namespace,
  localPod AS pod,
  round(8 * sumIf(bytes, direction = 'out') / {{step:UInt32}} / 1e6, 3) AS sent_mbps,
  round(8 * sumIf(bytes, direction = 'in') / {{step:UInt32}} / 1e6, 3) AS received_mbps
FROM {_TABLE}
WHERE {_WINDOW}
GROUP BY time, namespace, pod
ORDER BY time, namespace, pod""",
    ),
)

QUERIES: dict[str, Query] = {q.name: q for q in _QUERIES}
