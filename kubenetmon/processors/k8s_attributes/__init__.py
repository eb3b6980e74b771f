"""``k8s_attributes`` processor: attributes conntrack records to Kubernetes pods, nodes and zones."""

from __future__ import annotations

from typing import Any

from kubenetmon.component import ProcessorFactory, Stability
from kubenetmon.hookspecs import hookimpl
from kubenetmon.processors.k8s_attributes.config import (
    K8sAttributesConfig,
    KubernetesSourceConfig,
    PeerClusterConfig,
    StaticSourceConfig,
)
from kubenetmon.processors.k8s_attributes.decision import UNKNOWN_CLUSTER, Attributor, BatchOutcome
from kubenetmon.processors.k8s_attributes.index import ClusterIndex, ObjectParser
from kubenetmon.processors.k8s_attributes.processor import K8sAttributesProcessor
from kubenetmon.processors.k8s_attributes.static_source import InventoryError, load_inventory
from kubenetmon.processors.k8s_attributes.vector import VectorAttributor

__all__ = [
    "UNKNOWN_CLUSTER",
    "Attributor",
    "BatchOutcome",
    "ClusterIndex",
    "InventoryError",
    "K8sAttributesConfig",
    "K8sAttributesProcessor",
    "KubernetesSourceConfig",
    "ObjectParser",
    "PeerClusterConfig",
    "StaticSourceConfig",
    "VectorAttributor",
    "factory",
    "load_inventory",
]

factory: ProcessorFactory[K8sAttributesConfig] = ProcessorFactory(
    type="k8s_attributes",
    config_model=K8sAttributesConfig,
    description="Turns conntrack records into out/in flows attributed to pods, nodes and zones "
    "(Kubernetes API list+watch, or a static inventory file).",
    stability=Stability.BETA,
    create=K8sAttributesProcessor,
)


@hookimpl
def kubenetmon_register_processors() -> list[ProcessorFactory[Any]]:
    return [factory]
