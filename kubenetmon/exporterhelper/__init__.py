"""Queueing, batching and retry for exporters, written once (like OTel's exporterhelper)."""

from kubenetmon.exporterhelper.config import BatchConfig, ExporterHelperConfig, QueueConfig, RetryConfig
from kubenetmon.exporterhelper.exporter import QueuedExporter
from kubenetmon.exporterhelper.queue import Block, PutResult, SendingQueue, UnstorableBatchError
from kubenetmon.exporterhelper.retry import backoff_intervals

__all__ = [
    "BatchConfig",
    "Block",
    "ExporterHelperConfig",
    "PutResult",
    "QueueConfig",
    "QueuedExporter",
    "RetryConfig",
    "SendingQueue",
    "UnstorableBatchError",
    "backoff_intervals",
]
