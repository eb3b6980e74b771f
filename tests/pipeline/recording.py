"""A test plugin whose components record what happens to them.

Registered with ``build_plugin_manager(extra_plugins=[RecordingPlugin()])``.
Each instance keeps its own journal, so tests never share state.
"""

from __future__ import annotations

import threading
from typing import Any

from pydantic import Field

from kubenetmon import (
    BaseComponent,
    ComponentConfig,
    Consumer,
    CreateSettings,
    ExporterFactory,
    FlowBatch,
    ProcessorFactory,
    ReceiverFactory,
    hookimpl,
)
from kubenetmon.component import Host
from kubenetmon.errors import BackpressureError


class ReplayConfig(ComponentConfig):
    fail_start: bool = Field(False, description="Raise from start() (to test start failures).")


class TagConfig(ComponentConfig):
    flag: str = Field("tagged", description="connection_flags key set on every flow.")
    batch_size: int = Field(1, gt=0, description="Only here to test '> 0' validation.")


class SinkConfig(ComponentConfig):
    refuse: bool = Field(False, description="Refuse every batch with backpressure.")


class RecordingPlugin:
    """Components that log lifecycle events to ``self.events`` and expose themselves by id."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.receivers: dict[str, ReplayReceiver] = {}
        self.sinks: dict[str, SinkExporter] = {}
        self._lock = threading.Lock()

    def record(self, event: str) -> None:
        with self._lock:
            self.events.append(event)

    @hookimpl
    def kubenetmon_register_receivers(self) -> list[ReceiverFactory[Any]]:
        def create(settings: CreateSettings, config: ReplayConfig, consumer: Consumer) -> ReplayReceiver:
            receiver = ReplayReceiver(self, str(settings.id), config, consumer)
            self.receivers[str(settings.id)] = receiver
            return receiver

        return [ReceiverFactory(type="replay", config_model=ReplayConfig, description="test", create=create)]

    @hookimpl
    def kubenetmon_register_processors(self) -> list[ProcessorFactory[Any]]:
        def create(settings: CreateSettings, config: TagConfig, consumer: Consumer) -> TagProcessor:
            return TagProcessor(self, str(settings.id), config, consumer)

        return [ProcessorFactory(type="tag", config_model=TagConfig, description="test", create=create)]

    @hookimpl
    def kubenetmon_register_exporters(self) -> list[ExporterFactory[Any]]:
        def create(settings: CreateSettings, config: SinkConfig) -> SinkExporter:
            sink = SinkExporter(self, str(settings.id), config)
            self.sinks[str(settings.id)] = sink
            return sink

        return [ExporterFactory(type="sink", config_model=SinkConfig, description="test", create=create)]


class _Recorded(BaseComponent):
    def __init__(self, plugin: RecordingPlugin, name: str) -> None:
        self.plugin = plugin
        self.name = name

    def start(self, host: Host) -> None:
        self.plugin.record(f"start {self.name}")

    def shutdown(self, timeout: float = 30.0) -> None:
        self.plugin.record(f"shutdown {self.name}")


class ReplayReceiver(_Recorded):
    def __init__(self, plugin: RecordingPlugin, name: str, config: ReplayConfig, consumer: Consumer) -> None:
        super().__init__(plugin, name)
        self.config = config
        self.consumer = consumer

    def start(self, host: Host) -> None:
        if self.config.fail_start:
            raise RuntimeError("port already in use")
        super().start(host)

    def emit(self, batch: FlowBatch) -> None:
        self.consumer.consume(batch)


class TagProcessor(_Recorded):
    def __init__(self, plugin: RecordingPlugin, name: str, config: TagConfig, consumer: Consumer) -> None:
        super().__init__(plugin, name)
        self.flag = config.flag
        self.next = consumer

    def consume(self, batch: FlowBatch) -> None:
        for flow in batch.flows:
            flow.connection_flags[self.flag] = True
        self.next.consume(batch)


class SinkExporter(_Recorded):
    def __init__(self, plugin: RecordingPlugin, name: str, config: SinkConfig) -> None:
        super().__init__(plugin, name)
        self.refuse = config.refuse
        self.batches: list[FlowBatch] = []

    def consume(self, batch: FlowBatch) -> None:
        if self.refuse:
            raise BackpressureError("sink refuses")
        self.batches.append(batch)
