"""The pipeline: graph building, fan-out, and the running service."""

from kubenetmon.pipeline.consumers import CountingConsumer, FanOut
from kubenetmon.pipeline.graph import Graph, Node, build_graph
from kubenetmon.pipeline.service import Service

__all__ = ["CountingConsumer", "FanOut", "Graph", "Node", "Service", "build_graph"]
