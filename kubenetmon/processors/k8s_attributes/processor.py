"""The ``k8s_attributes`` processor component: records in, attributed flows out."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pyarrow as pa

from kubenetmon._memory import release_free_memory
from kubenetmon.component import Consumer, CreateSettings, Host
from kubenetmon.compute import compute_slot
from kubenetmon.errors import BackpressureError
from kubenetmon.flows import ConntrackRecord, Flow, FlowBatch
from kubenetmon.processors.k8s_attributes.config import (
    K8sAttributesConfig,
    KubernetesSourceConfig,
    StaticSourceConfig,
)
from kubenetmon.processors.k8s_attributes.decision import Attributor, BatchOutcome
from kubenetmon.processors.k8s_attributes.index import ClusterIndex, ObjectParser
from kubenetmon.processors.k8s_attributes.kube_source import KubernetesSource
from kubenetmon.processors.k8s_attributes.static_source import StaticSource
from kubenetmon.processors.k8s_attributes.vector import VectorAttributor
from kubenetmon.telemetry.metrics import ComponentMetrics

__all__ = ["K8sAttributesProcessor"]

Source = KubernetesSource | StaticSource


def _concat(first: pa.RecordBatch, second: pa.RecordBatch) -> pa.RecordBatch:
    """Two flow batches as one (their string dictionaries differ: unified)."""
    table = pa.Table.from_batches([first, second]).unify_dictionaries().combine_chunks()
    return table.to_batches()[0] if table.num_rows else second


def _make_source(
    kind: str,
    kubernetes: KubernetesSourceConfig,
    static: StaticSourceConfig,
    index: ClusterIndex,
    *,
    parser: ObjectParser,
    logger: logging.Logger,
    metrics: ComponentMetrics,
    owners: bool,
) -> Source:
    if kind == "static":
        return StaticSource(
            path=static.path, poll_interval=static.poll_interval, index=index,
            parser=parser, logger=logger, metrics=metrics,
        )
    return KubernetesSource(kubernetes, index, parser, logger, metrics, owners=owners)


def _describe(r: ConntrackRecord) -> str:
    return (
        f"{r.transport} ({r.src}:{r.sport}->{r.dst}:{r.dport}), "
        f"({r.reply_src}:{r.reply_sport}->{r.reply_dst}:{r.reply_dport}) seen by node {r.node!r}"
    )


class K8sAttributesProcessor:
    """Turns ``FlowBatch.records`` into attributed ``FlowBatch.flows`` (see README.md).

    The index is filled by a source (Kubernetes API or static file) running in
    its own thread(s); ``consume`` only reads it.
    """

    def __init__(self, settings: CreateSettings, config: K8sAttributesConfig, consumer: Consumer) -> None:
        self._config = config
        self._next = consumer
        self._log = settings.logger
        retention_ns = int(config.deleted_retention * 1_000_000_000)
        identity_cluster = settings.identity.cluster
        if any(peer.name == identity_cluster for peer in config.clusters):
            raise ValueError(f"k8s_attributes: clusters: {identity_cluster!r} is this gateway's own cluster "
                             "(service::identity::cluster); list only the other clusters")

        def new_index() -> ClusterIndex:
            return ClusterIndex(retention_ns=retention_ns, max_retired=config.deleted_max)

        def new_parser(cluster: str) -> ObjectParser:
            return ObjectParser(
                app_labels=config.app_labels,
                instance_id_labels=config.instance_id_labels,
                zone_labels=config.zone_labels,
                address_types=config.kubernetes.address_types,
                cluster=cluster,
            )

        # The own cluster's endpoints carry cluster "" in the index: the attributor writes
        # service::identity::cluster for them, as before several inventories existed.
        self.index = new_index()
        self.source: Source = _make_source(
            config.source, config.kubernetes, config.static, self.index, parser=new_parser(""),
            logger=self._log, metrics=settings.metrics, owners=config.owners,
        )
        self.peers: list[tuple[str, ClusterIndex, Source]] = []
        for peer in config.clusters:
            index = new_index()
            # Metrics and logs of a peer's source are told apart by component "<id>/<cluster>".
            source = _make_source(
                peer.source, peer.kubernetes, peer.static, index, parser=new_parser(peer.name),
                logger=self._log.getChild(peer.name),
                metrics=settings.metrics.for_component(f"{settings.metrics.component}/{peer.name}"),
                owners=config.owners,
            )
            self.peers.append((peer.name, index, source))
        options: dict[str, Any] = {
            "cluster": identity_cluster,
            "keep_node_flows": config.node_flows == "keep",
            "keep_unknown_direction": config.unknown_direction == "keep",
            "owners": config.owners,
            "peers": [(name, index) for name, index, _ in self.peers],
        }
        self._attributor = Attributor(self.index, **options)
        self._vector = (
            VectorAttributor(self.index, **options, compile_min_interval=config.compile_min_interval)
            if config.engine == "columnar" else None
        )
        m = settings.metrics
        self._m_records = m.counter("k8s_attributes_records_total", "Conntrack records attributed into flows.")
        self._m_dropped = m.counter(
            "k8s_attributes_dropped_records_total", "Conntrack records dropped, by reason.", ["reason"]
        )
        self._m_unknown_kept = m.counter(
            "k8s_attributes_unknown_direction_kept_total",
            "Records whose direction could not be decided, kept with the original source as local.",
        )
        self._m_node_kept = m.counter(
            "k8s_attributes_node_flows_kept_total", "Node/hostNetwork records kept (node_flows: keep)."
        )
        self._m_lookups = m.counter(
            "k8s_attributes_lookups_total", "Address lookups in the index, by result (hit, miss).", ["result"]
        )
        self._m_hits = self._m_lookups.labels(result="hit")
        self._m_misses = self._m_lookups.labels(result="miss")
        for name, doc, fn in (
            ("k8s_attributes_pods_indexed", "Pods in the index.", lambda: self.index.pod_count),
            ("k8s_attributes_pod_ips_indexed", "Pod IPs that resolve to a pod.", lambda: self.index.pod_ip_count),
            ("k8s_attributes_nodes_indexed", "Nodes in the index.", lambda: self.index.node_count),
            ("k8s_attributes_shared_pod_ips", "IPs claimed by several live pods (newest running wins).",
             self.index.shared_ip_count),
            ("k8s_attributes_deleted_pod_ips_retained",
             "(pod, IP) tenancies of deleted or finished pods remembered for late records.",
             lambda: self.index.retired_count),
        ):
            m.gauge(name, doc).labels().set_function(fn)
        self._m_evicted = m.counter(
            "k8s_attributes_deleted_evicted_total",
            "Remembered (pod, IP) tenancies forgotten before deleted_retention because deleted_max was reached.",
        )
        self._evicted_seen = 0
        self._log_lock = threading.Lock()
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._started = False
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    def _sources(self) -> list[Source]:
        return [self.source, *(source for _, _, source in self.peers)]

    def start(self, host: Host) -> None:
        self._started = True
        started: list[Source] = []
        try:
            for source in self._sources():
                source.start()
                started.append(source)
        except BaseException:
            for source in started:  # a bad peer inventory must not leave the others' threads running
                source.stop(5.0)
            raise

    def shutdown(self, timeout: float = 30.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            deadline = time.monotonic() + timeout
            for source in self._sources():
                source.stop(max(0.0, deadline - time.monotonic()))

    def is_ready(self) -> bool:
        ready = all(source.is_ready() for source in self._sources())
        if ready and self._vector is not None and not self._vector.compiles:
            # Compile the first snapshot now, not on the first batch: 0.2 s of CPU at 50k pods (0.02 at 10k),
            # which that batch's agent would wait for (and later ones behind it).
            self._vector.snapshot()
            release_free_memory()  # what loading the inventory and compiling it left free (MBs per 10k pods)
        return ready

    def health(self) -> str | None:
        for source in self._sources():
            problem = source.health()
            if problem is not None:
                return problem
        return None

    # ------------------------------------------------------------------ data path

    def consume(self, batch: FlowBatch) -> None:
        if not batch.num_records:
            self._next.consume(batch)
            return
        if self._config.wait_for_sync and not self.is_ready():
            raise BackpressureError("k8s_attributes: pods and nodes are not listed yet; retry shortly")
        self.index.expire()
        for _, index, _ in self.peers:
            index.expire()
        # A new batch either way, so that a caller retrying after backpressure downstream
        # still holds its records untouched. It keeps the producer's batch id: the flows are
        # what the named records became, so a re-delivered batch is still recognised downstream.
        if self._vector is not None:
            with compute_slot():
                table, outcome = self._vector.attribute_table(batch.record_table())
            if batch.num_flows:  # flows that came with the records go on, first
                table = _concat(batch.flow_table(), table)
            self._account(outcome)
            self._next.consume(FlowBatch(flows=table, batch_id=batch.batch_id))
            return
        flows: list[Flow] = list(batch.flows)
        outcome = self._attributor.attribute(batch.records, flows)
        self._account(outcome)
        self._next.consume(FlowBatch([], flows, batch.batch_id))

    def _account(self, o: BatchOutcome) -> None:
        evicted = self.index.evicted + sum(index.evicted for _, index, _ in self.peers)
        if evicted > self._evicted_seen:
            self._m_evicted.inc(evicted - self._evicted_seen)
            self._evicted_seen = evicted
        if o.attributed:
            self._m_records.inc(o.attributed)
        if o.lookup_hits:
            self._m_hits.inc(o.lookup_hits)
        if o.lookup_misses:
            self._m_misses.inc(o.lookup_misses)
        if o.kept_unknown_direction:
            self._m_unknown_kept.inc(o.kept_unknown_direction)
        if o.kept_node_flow:
            self._m_node_kept.inc(o.kept_node_flow)
        if o.dropped_node_flow:
            self._m_dropped.labels(reason="node_flow").inc(o.dropped_node_flow)
            self._log_drop("node_flow", o.dropped_node_flow, "flow to or from a node address", o.example_node_flow)
        if o.dropped_unknown_direction:
            self._m_dropped.labels(reason="unknown_direction").inc(o.dropped_unknown_direction)
            self._log_drop("unknown_direction", o.dropped_unknown_direction,
                           "cannot identify flow direction", o.example_unknown)

    def _log_drop(self, reason: str, count: int, what: str, example: ConntrackRecord | None) -> None:
        """One line per reason per ``drop_log_interval``, with the count since the last line."""
        now = time.monotonic()
        with self._log_lock:
            total = self._suppressed.get(reason, 0) + count
            if now - self._last_log.get(reason, -1e18) < self._config.drop_log_interval:
                self._suppressed[reason] = total
                return
            self._suppressed[reason] = 0
            self._last_log[reason] = now
        self._log.info(
            "dropped %d conntrack record(s) (%s: %s), e.g. %s",
            total, reason, what, _describe(example) if example is not None else "?",
        )
