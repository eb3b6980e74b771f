"""Names of the OTLP wire contract (DESIGN §4.1 and §4.4), in one place.

The agent → gateway contract is public: anything that speaks it can feed the
gateway. Changing a name here is a breaking change of that contract.
"""

from __future__ import annotations

__all__ = [
    "ATTR_DIRECTION",
    "ATTR_DST_ADDRESS",
    "ATTR_DST_PORT",
    "ATTR_NETWORK_TRANSPORT",
    "ATTR_NETWORK_TYPE",
    "ATTR_REPLY_DST_ADDRESS",
    "ATTR_REPLY_DST_PORT",
    "ATTR_REPLY_SRC_ADDRESS",
    "ATTR_REPLY_SRC_PORT",
    "ATTR_SRC_ADDRESS",
    "ATTR_SRC_PORT",
    "BATCH_ID_METADATA",
    "DIRECTION_ORIGINAL",
    "DIRECTION_REPLY",
    "METRIC_BYTES",
    "METRIC_FLOW_BYTES",
    "METRIC_FLOW_PACKETS",
    "METRIC_PACKETS",
    "RESOURCE_HOST_NAME",
    "RESOURCE_NODE_NAME",
    "RESOURCE_SERVICE_NAME",
    "SCOPE_NAME",
    "SERVICE_NAME_AGENT",
    "TEMPORALITY_CUMULATIVE",
    "TEMPORALITY_DELTA",
    "UNIT_BYTES",
    "UNIT_PACKETS",
]

RESOURCE_SERVICE_NAME = "service.name"
RESOURCE_NODE_NAME = "k8s.node.name"
RESOURCE_HOST_NAME = "host.name"
SERVICE_NAME_AGENT = "kubenetmon-agent"

SCOPE_NAME = "kubenetmon"

METRIC_BYTES = "kubenetmon.conntrack.bytes"
METRIC_PACKETS = "kubenetmon.conntrack.packets"
METRIC_FLOW_BYTES = "kubenetmon.flow.bytes"
METRIC_FLOW_PACKETS = "kubenetmon.flow.packets"
UNIT_BYTES = "By"
UNIT_PACKETS = "{packet}"

# opentelemetry.proto.metrics.v1.AggregationTemporality
TEMPORALITY_DELTA = 1
TEMPORALITY_CUMULATIVE = 2

ATTR_NETWORK_TRANSPORT = "network.transport"
ATTR_NETWORK_TYPE = "network.type"
ATTR_SRC_ADDRESS = "source.address"
ATTR_SRC_PORT = "source.port"
ATTR_DST_ADDRESS = "destination.address"
ATTR_DST_PORT = "destination.port"
ATTR_REPLY_SRC_ADDRESS = "kubenetmon.reply.source.address"
ATTR_REPLY_SRC_PORT = "kubenetmon.reply.source.port"
ATTR_REPLY_DST_ADDRESS = "kubenetmon.reply.destination.address"
ATTR_REPLY_DST_PORT = "kubenetmon.reply.destination.port"
ATTR_DIRECTION = "kubenetmon.conntrack.direction"
DIRECTION_ORIGINAL = "original"
DIRECTION_REPLY = "reply"

# gRPC request metadata carrying the exporter's idempotency key (the queue
# block id, plus ":<part>" when one block needs several requests).
BATCH_ID_METADATA = "kubenetmon-batch-id"
