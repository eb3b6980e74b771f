"""Building the component graph from ``service::pipelines``.

Receivers and exporters are shared: one instance per id, whatever the
number of pipelines using it. Processors are per pipeline (as in the
OpenTelemetry Collector), so a processor's state never mixes pipelines. Each
pipeline ends in a fan-out over its exporters; a receiver in several
pipelines feeds a fan-out over them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kubenetmon.component import (
    Component,
    ComponentID,
    Consumer,
    CreateSettings,
    ExporterFactory,
    ExtensionFactory,
    Kind,
    ProcessorFactory,
    ReceiverFactory,
)
from kubenetmon.config.validate import Config
from kubenetmon.pipeline.consumers import CountingConsumer, FanOut
from kubenetmon.plugins import ComponentRegistry
from kubenetmon.telemetry.metrics import ComponentMetrics

__all__ = ["Graph", "Node", "build_graph"]


@dataclass
class Node:
    """One built component and where it sits."""

    kind: Kind
    id: ComponentID
    component: Component
    pipeline: str = ""  # for processors: the pipeline owning this instance

    @property
    def label(self) -> str:
        return f"{self.id}@{self.pipeline}" if self.pipeline else str(self.id)

    def describe(self) -> str:
        return f'{self.kind.value} "{self.label}"'


@dataclass
class Graph:
    extensions: list[Node] = field(default_factory=list)
    exporters: list[Node] = field(default_factory=list)
    processors: list[Node] = field(default_factory=list)
    receivers: list[Node] = field(default_factory=list)

    def start_order(self) -> list[Node]:
        # Processors are started from the exporter side of each pipeline, so
        # that every consumer runs before its producer.
        return [*self.extensions, *self.exporters, *reversed(self.processors), *self.receivers]

    def all(self) -> list[Node]:
        return self.start_order()


def _settings(config: Config, kind: Kind, id_: ComponentID, label: str, metrics: ComponentMetrics) -> CreateSettings:
    return CreateSettings(
        id=id_,
        kind=kind,
        identity=config.service.identity,
        metrics=metrics.for_component(label),
        logger=logging.getLogger(f"kubenetmon.{kind.value}.{label}"),
    )


def build_graph(config: Config, registry: ComponentRegistry, metrics: ComponentMetrics) -> Graph:
    """Create every component; raises whatever a factory raises (the caller names it)."""
    graph = Graph()
    service = config.service

    for ref in service.extensions:
        id_ = ComponentID.parse(ref)
        ext_factory = registry.get(Kind.EXTENSION, id_.type)
        assert ext_factory is not None and isinstance(ext_factory.factory, ExtensionFactory)
        settings = _settings(config, Kind.EXTENSION, id_, str(id_), metrics)
        graph.extensions.append(
            Node(Kind.EXTENSION, id_, ext_factory.factory.create(settings, config.component(Kind.EXTENSION, id_)))
        )

    exporters: dict[ComponentID, Node] = {}
    for pipeline in service.pipelines.values():
        for ref in pipeline.exporters:
            id_ = ComponentID.parse(ref)
            if id_ in exporters:
                continue
            exp_factory = registry.get(Kind.EXPORTER, id_.type)
            assert exp_factory is not None and isinstance(exp_factory.factory, ExporterFactory)
            settings = _settings(config, Kind.EXPORTER, id_, str(id_), metrics)
            node = Node(Kind.EXPORTER, id_, exp_factory.factory.create(settings, config.component(Kind.EXPORTER, id_)))
            exporters[id_] = node
            graph.exporters.append(node)

    pipeline_heads: dict[str, Consumer] = {}
    for name, pipeline in service.pipelines.items():
        fanout_metrics = metrics.for_component(f"fanout@{name}")
        consumer: Consumer = FanOut(
            [exporters[ComponentID.parse(r)].component for r in pipeline.exporters],  # type: ignore[misc]
            fanout_metrics,
            copy=False,
        )
        for ref in reversed(pipeline.processors):
            id_ = ComponentID.parse(ref)
            proc_factory = registry.get(Kind.PROCESSOR, id_.type)
            assert proc_factory is not None and isinstance(proc_factory.factory, ProcessorFactory)
            label = f"{id_}@{name}" if len(service.pipelines) > 1 else str(id_)
            settings = _settings(config, Kind.PROCESSOR, id_, label, metrics)
            proc_metrics = settings.metrics
            downstream = CountingConsumer(
                consumer,
                proc_metrics.counter("processor_outgoing_flows_total", "Flows a processor passed on."),
                proc_metrics.counter(
                    "processor_refused_downstream_flows_total",
                    "Flows a processor could not pass on because the next stage pushed back.",
                ),
            )
            processor = proc_factory.factory.create(settings, config.component(Kind.PROCESSOR, id_), downstream)
            owner = name if len(service.pipelines) > 1 else ""
            graph.processors.append(Node(Kind.PROCESSOR, id_, processor, pipeline=owner))
            consumer = CountingConsumer(
                processor,
                proc_metrics.counter("processor_incoming_flows_total", "Flows a processor took in."),
                proc_metrics.counter(
                    "processor_refused_flows_total", "Flows handed to a processor and refused (backpressure)."
                ),
            )
        pipeline_heads[name] = consumer

    receiver_ids: list[ComponentID] = []
    for pipeline in service.pipelines.values():
        for ref in pipeline.receivers:
            id_ = ComponentID.parse(ref)
            if id_ not in receiver_ids:
                receiver_ids.append(id_)
    for id_ in receiver_ids:
        heads = [pipeline_heads[n] for n, p in service.pipelines.items() if str(id_) in p.receivers]
        rec_factory = registry.get(Kind.RECEIVER, id_.type)
        assert rec_factory is not None and isinstance(rec_factory.factory, ReceiverFactory)
        settings = _settings(config, Kind.RECEIVER, id_, str(id_), metrics)
        out = CountingConsumer(
            FanOut(heads, settings.metrics, copy=True),
            settings.metrics.counter("receiver_accepted_flows_total", "Flows a receiver pushed into the pipeline."),
            settings.metrics.counter(
                "receiver_refused_flows_total", "Flows a receiver could not push because the pipeline pushed back."
            ),
        )
        receiver = rec_factory.factory.create(settings, config.component(Kind.RECEIVER, id_), out)
        graph.receivers.append(Node(Kind.RECEIVER, id_, receiver))
    return graph
