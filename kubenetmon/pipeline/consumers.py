"""Consumers the pipeline puts between components: fan-out and counting."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from kubenetmon.component import Consumer
from kubenetmon.errors import BackpressureError
from kubenetmon.flows import FlowBatch
from kubenetmon.telemetry.metrics import BoundMetric, ComponentMetrics

__all__ = ["CountingConsumer", "FanOut"]

log = logging.getLogger(__name__)


class CountingConsumer:
    """Counts what passes into ``target``: taken, and refused by backpressure."""

    def __init__(self, target: Consumer, taken: BoundMetric, refused: BoundMetric) -> None:  # type: ignore[type-arg]
        self._target = target
        self._taken = taken
        self._refused = refused

    def consume(self, batch: FlowBatch) -> None:
        n = len(batch)
        try:
            self._target.consume(batch)
        except BackpressureError:
            self._refused.inc(n)
            raise
        self._taken.inc(n)


class FanOut:
    """Hands every batch to each consumer; stands before the exporters of a pipeline
    and after a receiver that feeds several pipelines.

    With ``copy`` (in front of pipelines, whose processors change batches)
    consumers other than the last get a copy (:meth:`FlowBatch.copy`), so that
    one may change its batch without affecting another. Arrow views are
    immutable and shared by the copies, so copying a columnar batch costs no
    work per record; only views held as rows (the row-wise helper) are copied. In front of exporters no copy is made:
    exporters must not change the batches they are given. When *every* consumer refuses a batch the
    refusal goes back to the caller, who keeps the batch and retries, so
    nothing is counted twice. When only some refuse, retrying the whole batch
    would duplicate it in those that took it: the refusing ones are retried
    here for up to ``partial_retry_seconds``, then the batch is dropped *for
    them only*, counted in ``kubenetmon_fanout_dropped_flows_total`` and logged.
    """

    def __init__(
        self,
        consumers: Sequence[Consumer],
        metrics: ComponentMetrics,
        *,
        copy: bool,
        partial_retry_seconds: float = 5.0,
    ) -> None:
        if not consumers:
            raise ValueError("a fan-out needs at least one consumer")
        self._consumers = list(consumers)
        self._copy = copy
        self._partial_retry_seconds = partial_retry_seconds
        self._dropped = metrics.counter(
            "fanout_dropped_flows_total",
            "Flows dropped for one branch of a fan-out that kept refusing while others had taken them.",
        )

    def consume(self, batch: FlowBatch) -> None:
        if len(self._consumers) == 1:
            self._consumers[0].consume(batch)
            return
        last = len(self._consumers) - 1
        copies = [batch.copy() if self._copy and i < last else batch for i in range(len(self._consumers))]
        refused: list[tuple[int, BackpressureError]] = []
        for i, consumer in enumerate(self._consumers):
            try:
                consumer.consume(copies[i])
            except BackpressureError as exc:
                refused.append((i, exc))
        if not refused:
            return
        if len(refused) == len(self._consumers):
            raise refused[0][1]
        deadline = time.monotonic() + self._partial_retry_seconds
        for i, first_refusal in refused:
            last_refusal = first_refusal
            delay = 0.05
            while True:
                if time.monotonic() >= deadline:
                    self._dropped.inc(len(copies[i]))
                    log.error(
                        "dropped %d flows for one pipeline branch: it kept refusing (%s) while "
                        "other branches had taken them",
                        len(copies[i]),
                        last_refusal,
                    )
                    break
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                try:
                    self._consumers[i].consume(copies[i])
                    break
                except BackpressureError as again:
                    last_refusal = again
