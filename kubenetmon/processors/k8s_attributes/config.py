"""Configuration of the ``k8s_attributes`` processor."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kubenetmon.component import ComponentConfig

__all__ = ["K8sAttributesConfig", "KubernetesSourceConfig", "PeerClusterConfig", "StaticSourceConfig"]


class KubernetesSourceConfig(ComponentConfig):
    """How to reach the Kubernetes API and how to list/watch it."""

    kubeconfig: str = Field(
        "",
        description="Path of a kubeconfig file. Empty: the in-cluster service account when running in a pod "
        "(KUBERNETES_SERVICE_HOST is set), else $KUBECONFIG or ~/.kube/config.",
    )
    context: str = Field("", description="kubeconfig context to use; empty for the current context.")
    page_size: int = Field(
        500, ge=1, le=10000, description="Objects per list page (limit/continue) when (re-)listing."
    )
    watch_timeout: int = Field(
        300,
        ge=1,
        description="Seconds the API server keeps one watch open (timeoutSeconds); the watch is then "
        "resumed from the last resourceVersion without a re-list.",
    )
    read_timeout: float = Field(
        90.0,
        gt=0,
        description="Seconds without any byte from the API (events or bookmarks) after which a watch is "
        "considered dead and resumed from its resourceVersion (no re-list).",
    )
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a TCP/TLS connection.")
    list_timeout: float = Field(120.0, gt=0, description="Seconds one list page may take.")
    backoff_initial: float = Field(
        0.5, gt=0, description="First wait, in seconds, before retrying after a failed list or watch."
    )
    backoff_max: float = Field(30.0, gt=0, description="Longest wait, in seconds, between retries.")
    pod_field_selector: str = Field(
        "",
        description="Field selector for the pod list/watch, e.g. 'spec.nodeName=node-a' to index only one "
        "node's pods. Empty: every pod of the cluster (needed to attribute remote pods).",
    )
    address_types: list[str] = Field(
        default_factory=lambda: ["InternalIP"],
        description="Node address types (status.addresses[].type) that identify node traffic.",
    )

    @model_validator(mode="after")
    def _check(self) -> KubernetesSourceConfig:
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) must be greater or equal to backoff_initial "
                f"({self.backoff_initial})"
            )
        return self


class StaticSourceConfig(ComponentConfig):
    """A YAML inventory of nodes and pods (format in the README)."""

    path: str = Field("", description="Path of the inventory YAML file. Required when source is 'static'.")
    poll_interval: float = Field(
        2.0, gt=0, description="Seconds between checks of the file's modification time; a change reloads it."
    )


class PeerClusterConfig(ComponentConfig):
    """Another cluster of the fleet: its inventory, attributed with its name."""

    name: str = Field(..., min_length=1, description="Cluster name written in local/remote cluster fields.")
    source: Literal["kubernetes", "static"] = Field(
        "kubernetes", description="Where this cluster's pods and nodes come from."
    )
    kubernetes: KubernetesSourceConfig = Field(
        default_factory=KubernetesSourceConfig,
        description="Settings of the kubernetes source (kubeconfig/context of that cluster).",
    )
    static: StaticSourceConfig = Field(
        default_factory=StaticSourceConfig, description="Settings of the static source."
    )

    @model_validator(mode="after")
    def _check(self) -> PeerClusterConfig:
        if self.source == "static" and not self.static.path:
            raise ValueError(f"clusters: {self.name}: static::path is required when source is 'static'")
        if self.source == "kubernetes" and not self.kubernetes.kubeconfig:
            raise ValueError(f"clusters: {self.name}: kubernetes::kubeconfig is required for another cluster "
                             "(the in-cluster account reaches only the own cluster)")
        return self


class K8sAttributesConfig(ComponentConfig):
    """Attributes conntrack records to pods, nodes and zones (see README.md)."""

    source: Literal["kubernetes", "static"] = Field(
        "kubernetes", description="Where pods and nodes come from: the Kubernetes API or a static YAML file."
    )
    kubernetes: KubernetesSourceConfig = Field(
        default_factory=KubernetesSourceConfig, description="Settings of the kubernetes source."
    )
    static: StaticSourceConfig = Field(
        default_factory=StaticSourceConfig, description="Settings of the static source."
    )
    node_flows: Literal["drop", "keep"] = Field(
        "drop",
        description="Flows whose original or reply source is a node address (node and hostNetwork traffic): "
        "'drop' them as the original does, or 'keep' them attributed to the node.",
    )
    unknown_direction: Literal["keep", "drop"] = Field(
        "keep",
        description="Flows whose direction cannot be decided (neither side on the observing node, rule 6): "
        "'keep' them with the original source as local endpoint, or 'drop' them.",
    )
    app_labels: list[str] = Field(
        default_factory=lambda: ["app.kubernetes.io/name", "k8s-app"],
        description="Pod labels giving the app name; the first non-empty one wins.",
    )
    instance_id_labels: list[str] = Field(
        default_factory=lambda: ["control-plane-id"],
        description="Pod labels giving the instance id; the first non-empty one wins.",
    )
    zone_labels: list[str] = Field(
        default_factory=lambda: ["topology.kubernetes.io/zone"],
        description="Node labels giving the availability zone; the first non-empty one wins.",
    )
    owners: bool = Field(
        False,
        description="Fill owner_kind/owner_name from ownerReferences (ReplicaSet → Deployment, StatefulSet, "
        "DaemonSet, Job). With the kubernetes source this also watches ReplicaSets.",
    )
    wait_for_sync: bool = Field(
        True,
        description="Refuse batches (backpressure) until pods and nodes are fully listed, so that nothing "
        "is attributed from an empty index.",
    )
    drop_log_interval: float = Field(
        10.0, ge=0, description="At most one log line per drop reason per this many seconds."
    )
    engine: Literal["columnar", "rows"] = Field(
        "columnar",
        description="'columnar': the decision procedure as vector operations on Arrow columns (no Python "
        "object per record); 'rows': the row-wise procedure, kept as a reference and fallback. Same results.",
    )
    compile_min_interval: float = Field(
        0.0,
        ge=0,
        description="Columnar engine: seconds a compiled inventory is reused after the inventory changed. "
        "0 recompiles on the first batch after any change (exact). A compile costs ~25 ms at 10k pods and "
        "~150-200 ms at 50k; with heavy pod churn set e.g. 1 to compile at most once a second, at the price "
        "of changes younger than that not being seen yet (a new pod's first records unattributed, a deleted "
        "pod's IP still its own).",
    )
    deleted_retention: float = Field(
        3600.0,
        ge=0,
        description="Seconds a deleted (or finished) pod is remembered with its IPs, node zone and owner, "
        "so that records arriving late (an agent's queue after a gateway outage) are attributed to the pod "
        "that held the address during their interval. At least the senders' retry/queue window.",
    )
    deleted_max: int = Field(
        100_000, ge=0, description="At most this many remembered (pod, IP) tenancies; the oldest are "
        "forgotten first (counted in k8s_attributes_deleted_evicted_total).",
    )
    clusters: list[PeerClusterConfig] = Field(
        default_factory=list,
        description="Other clusters of the fleet, each with its name and inventory: their pods and nodes "
        "are attributed with their cluster name (remote or local), after the own cluster's.",
    )

    @model_validator(mode="after")
    def _check(self) -> K8sAttributesConfig:
        if self.source == "static" and not self.static.path:
            raise ValueError("static::path is required when source is 'static': give the inventory YAML file")
        for name in ("app_labels", "instance_id_labels", "zone_labels"):
            if any(not label for label in getattr(self, name)):
                raise ValueError(f"{name} must not contain empty label names")
        names = [c.name for c in self.clusters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"clusters: names must be unique; repeated: {', '.join(duplicates)}")
        if "UNKNOWN" in names:
            raise ValueError("clusters: 'UNKNOWN' is reserved for remotes outside every known cluster")
        return self
