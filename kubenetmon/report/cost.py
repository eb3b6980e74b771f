"""The SQL behind ``kubenetmon report cost``: what the traffic costs, from ``network_flows_0``.

Every query is documented verbatim in ``docs/queries.md`` (``<!-- cost-query: NAME -->``
blocks; a test checks the text is the same). They take the parameters of
:mod:`kubenetmon.report.queries` plus three from the price table
(:meth:`kubenetmon.report.prices.PriceTable.rates`):

* ``{rates:String}`` — USD per byte by ``<cloud>/<class>``, a JSON object;
* ``{nat_flag:String}`` — the ``connectionFlags`` key of flows through a NAT gateway;
* ``{default_cloud:String}`` — the cloud of rows whose ``localCloud`` is empty.

Counting each byte once
-----------------------
Each conntrack entry gives the observing node an ``out`` row (bytes the local
pod sent) and an ``in`` row (bytes it received). A connection between two
monitored pods is therefore seen twice: A's ``out`` row and B's ``in`` row are
the same bytes. Providers bill bytes where they leave (and, for AWS
inter-zone, again where they arrive — the two sides' prices are added up in
the rate), so the transfer charge is computed on **``out`` rows only**: each
byte is billed once, on its sender's row, at the price of the sender's class.
Bytes received from outside the cluster (Internet, cloud services) are free
to receive and are not billed. A known gap: bytes sent to a monitored pod by
a sender in the VPC that kubenetmon does not observe (a VM, an unmonitored
node) have only an ``in`` row and are not billed here.

The NAT gateway's processing charge is different: the gateway processes
bytes in both directions, and NAT'd traffic leaves the VPC so its remote side
is never a monitored pod. It is charged on **both** ``out`` and ``in`` rows of
flows whose ``connectionFlags[nat_flag]`` is true, on top of the transfer
charge.

Billed classes (``billed_class``), from ``connectionClass`` and the zones:
``inter_zone`` (INTRA_VPC, both zones known and different), ``same_zone``
(free), ``vpc_unknown_zone`` (INTRA_VPC without both zones: not priced —
shown so the unpriced bytes are visible), ``inter_region`` (rate of the
region pair when the table has one, else the cloud's default),
``internet``, ``cloud_service`` (INTRA_REGION), ``unknown``.
"""

from __future__ import annotations

import json
from typing import Any

from kubenetmon.report.prices import PriceTable
from kubenetmon.report.queries import _LOCAL, _REMOTE, _TABLE, _WINDOW, Query

__all__ = ["COST_QUERIES", "COST_SUMMARY", "cost_parameters", "priced_rows"]

_RATES = "rates"


def priced_rows(table: str = _TABLE, where: str = _WINDOW) -> str:
    """A subquery: the rows of ``table`` in the window, each with its billed class, bytes and cost.

    ``table`` and ``where`` are parameters so the Grafana dashboard can reuse
    the pricing with its own macros; the report uses the defaults.
    """
    return f"""(
  WITH JSONExtract({{rates:String}}, 'Map(String, Float64)') AS rates
  SELECT
    *,
    if(localCloud != '', localCloud, {{default_cloud:String}}) AS row_cloud,
    multiIf(
      connectionClass = 'INTRA_VPC' AND localAvailabilityZone != '' AND remoteAvailabilityZone != ''
        AND localAvailabilityZone != remoteAvailabilityZone, 'inter_zone',
      connectionClass = 'INTRA_VPC' AND localAvailabilityZone != ''
        AND localAvailabilityZone = remoteAvailabilityZone, 'same_zone',
      connectionClass = 'INTRA_VPC', 'vpc_unknown_zone',
      connectionClass = 'INTER_REGION', 'inter_region',
      connectionClass = 'PUBLIC_INTERNET', 'internet',
      connectionClass = 'INTRA_REGION', 'cloud_service',
      'unknown') AS billed_class,
    if(direction = 'out', bytes, 0) AS row_billed_bytes,
    concat(row_cloud, '/inter_region/', localRegion, '>', remoteRegion) AS row_pair_key,
    row_billed_bytes * if(billed_class = 'inter_region' AND mapContains({_RATES}, row_pair_key),
      {_RATES}[row_pair_key], {_RATES}[concat(row_cloud, '/', billed_class)]) AS row_transfer_usd,
    if(connectionFlags[{{nat_flag:String}}], bytes, 0) AS row_nat_bytes,
    row_nat_bytes * {_RATES}[concat(row_cloud, '/nat_gateway')] AS row_nat_usd
  FROM {table}
  WHERE {where}
)"""


_PRICED = priced_rows()
_COST = "sum(row_transfer_usd) + sum(row_nat_usd)"

_COST_QUERIES = (
    Query(
        "cost-by-class",
        "Cost by billed class",
        "What does the traffic cost, by kind of transfer?",
        f"""SELECT
  billed_class,
  sum(row_billed_bytes) AS billed_bytes,
  sum(row_transfer_usd) AS transfer_usd,
  sum(row_nat_bytes) AS nat_bytes,
  sum(row_nat_usd) AS nat_usd,
  {_COST} AS cost_usd
FROM {_PRICED}
GROUP BY billed_class
ORDER BY cost_usd DESC, billed_bytes DESC, billed_class""",
    ),
    Query(
        "cost-by-pair",
        "Cross-zone cost by workload pair (sender → receiver)",
        "Which workload pairs across zones cost the most?",
        f"""SELECT
  localNamespace AS namespace,
  {_LOCAL} AS workload,
  localAvailabilityZone AS zone,
  remoteNamespace AS remote_namespace,
  {_REMOTE} AS remote_workload,
  remoteAvailabilityZone AS remote_zone,
  sum(row_billed_bytes) AS billed_bytes,
  {_COST} AS cost_usd
FROM {_PRICED}
WHERE billed_class = 'inter_zone' AND direction = 'out'
GROUP BY namespace, workload, zone, remote_namespace, remote_workload, remote_zone
ORDER BY cost_usd DESC, billed_bytes DESC, namespace, workload, remote_workload
LIMIT {{limit:UInt32}}""",
    ),
    Query(
        "cost-by-namespace",
        "Cost by namespace of the local workload",
        "Which namespaces cause the cost?",
        f"""SELECT
  localNamespace AS namespace,
  sum(row_billed_bytes) AS billed_bytes,
  sumIf(row_transfer_usd, billed_class = 'inter_zone') AS inter_zone_usd,
  sumIf(row_transfer_usd, billed_class = 'inter_region') AS inter_region_usd,
  sumIf(row_transfer_usd, billed_class = 'internet') AS internet_usd,
  sum(row_nat_usd) AS nat_usd,
  {_COST} AS cost_usd
FROM {_PRICED}
GROUP BY namespace
ORDER BY cost_usd DESC, billed_bytes DESC, namespace
LIMIT {{limit:UInt32}}""",
    ),
    Query(
        "cost-by-service",
        "Cost of traffic to cloud services",
        "What does the traffic to S3 (or any cloud service) cost?",
        f"""SELECT
  remoteCloud AS cloud,
  remoteCloudService AS service,
  remoteRegion AS region,
  billed_class,
  sum(row_billed_bytes) AS billed_bytes,
  sum(row_nat_bytes) AS nat_bytes,
  {_COST} AS cost_usd
FROM {_PRICED}
WHERE remoteCloudService != ''
GROUP BY cloud, service, region, billed_class
ORDER BY cost_usd DESC, billed_bytes DESC, cloud, service, region
LIMIT {{limit:UInt32}}""",
    ),
    Query(
        "cost-over-time",
        "Cost by billed class over time",
        "How does the cost develop?",
        f"""SELECT
  toStartOfInterval(intervalStartTime, toIntervalSecond({{step:UInt32}}), 'UTC') AS time,
  billed_class,
  sum(row_billed_bytes) AS billed_bytes,
  {_COST} AS cost_usd
FROM {_PRICED}
GROUP BY time, billed_class
ORDER BY time, billed_class""",
    ),
    Query(
        "cost-namespace-over-time",
        "Cost by namespace over time",
        "How does each namespace's cost develop?",
        f"""SELECT
  toStartOfInterval(intervalStartTime, toIntervalSecond({{step:UInt32}}), 'UTC') AS time,
  localNamespace AS namespace,
  sum(row_billed_bytes) AS billed_bytes,
  {_COST} AS cost_usd
FROM {_PRICED}
GROUP BY time, namespace
ORDER BY time, namespace""",
    ),
)

COST_QUERIES: dict[str, Query] = {q.name: q for q in _COST_QUERIES}
# What ``kubenetmon report cost`` prints (the over-time series are for charts).
COST_SUMMARY = ("cost-by-class", "cost-by-pair", "cost-by-namespace", "cost-by-service")


def cost_parameters(prices: PriceTable) -> dict[str, Any]:
    """The price table as the cost queries' parameters."""
    # JSON text, parsed by the SQL: the drivers differ in how they send a dict (chDB sends JSON, the
    # HTTP client a quoted map), but a String parameter arrives the same everywhere.
    return {"rates": json.dumps(prices.rates(), sort_keys=True), "nat_flag": prices.nat_flag,
            "default_cloud": prices.default_cloud}
