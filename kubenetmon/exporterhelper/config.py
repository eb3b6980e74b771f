"""Config shared by every exporter built on the helper (OpenTelemetry exporterhelper keys)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kubenetmon.component import ComponentConfig

__all__ = ["BatchConfig", "ExporterHelperConfig", "QueueConfig", "RetryConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueueConfig(_Strict):
    enabled: bool = Field(
        True,
        description="Queue batches and send them from background workers. false: push in the producer's "
        "thread, so its acknowledgement means delivered; a retryable failure is backpressure to the producer "
        "(the stateless gateway of docs/scaling.md).",
    )
    storage: Literal["memory", "persistent"] = Field(
        "memory",
        description="memory: lost on a crash. persistent: every accepted batch is on disk before "
        "consume() returns and is delivered after a restart (also after kill -9).",
    )
    directory: str = Field("", description="Directory of the persistent queue (required for persistent).")
    capacity: int = Field(1000, gt=0, description="Maximum number of batches held.")
    full_policy: Literal["block", "drop"] = Field(
        "block",
        description="When full: block tells the producer to retry later (backpressure); drop drops "
        "the new batch (counted in exporter_dropped_flows_total{reason=queue_full}).",
    )
    block_timeout: float = Field(
        1.0, ge=0, description="With block: seconds to wait for room before pushing back to the producer."
    )
    num_consumers: int = Field(1, gt=0, description="Number of sending workers.")
    dedup_window: float = Field(
        86400.0,
        ge=0,
        description="Seconds a named batch (FlowBatch.batch_id) is remembered after it was handled: a copy "
        "its producer re-sends after a crash is not queued again (counted in "
        "exporter_duplicate_batches_total). Persistent storage keeps the ids on disk; 0 turns this off.",
    )

    @model_validator(mode="after")
    def _directory_for_persistent(self) -> QueueConfig:
        if self.storage == "persistent" and not self.directory:
            raise ValueError("directory is required when storage is persistent")
        return self


class RetryConfig(_Strict):
    enabled: bool = Field(True, description="Retry retryable failures with exponential backoff.")
    initial_interval: float = Field(5.0, gt=0, description="Seconds before the first retry.")
    max_interval: float = Field(30.0, gt=0, description="Upper bound of the wait between retries.")
    max_elapsed_time: float = Field(
        300.0, ge=0, description="Give up (and count the drop) after this many seconds; 0 retries forever."
    )
    multiplier: float = Field(1.5, ge=1, description="Growth of the wait after each retry.")
    randomization_factor: float = Field(
        0.5, ge=0, le=1, description="Jitter: each wait is drawn from interval × [1-f, 1+f]."
    )


class BatchConfig(_Strict):
    max_flows: int = Field(
        10_000, gt=0, description="Send a block once it holds this many flows (records + attributed flows)."
    )
    max_wait: float = Field(
        0.0, ge=0, description="Seconds a block may wait for more batches; 0 sends every batch on its own."
    )
    align: bool = Field(
        False,
        description="Close blocks at wall-clock multiples of max_wait (e.g. on the minute), so that "
        "one block holds whole time buckets.",
    )


class ExporterHelperConfig(ComponentConfig):
    """Fields every queued exporter has; subclass it and add the exporter's own."""

    timeout: float = Field(5.0, gt=0, description="Seconds one send attempt may take.")
    sending_queue: QueueConfig = Field(
        default_factory=QueueConfig, description="The queue between consume() and the sending workers."
    )
    retry_on_failure: RetryConfig = Field(
        default_factory=RetryConfig, description="Retries of failed sends (exponential backoff with jitter)."
    )
    batch: BatchConfig = Field(default_factory=BatchConfig, description="How queued batches are grouped per send.")
