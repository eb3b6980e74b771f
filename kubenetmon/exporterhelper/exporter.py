"""The queued exporter: queue, batching, retries and self-metrics, written once.

An exporter subclasses :class:`QueuedExporter` and implements :meth:`push`
(send one block, raise :class:`~kubenetmon.errors.RetryableError` or
:class:`~kubenetmon.errors.PermanentError`), and optionally
:meth:`open`/:meth:`close` for its client. Any other exception is retried
at most three times, then the block is dropped (``reason="unexpected_error"``)
and the traceback logged: an unexpected error is never retried for the whole
retry window.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

from kubenetmon.component import BaseComponent, CreateSettings, Host
from kubenetmon.errors import BackpressureError, PermanentError, RetryableError
from kubenetmon.exporterhelper.config import ExporterHelperConfig
from kubenetmon.exporterhelper.queue import Block, PutResult, SendingQueue, UnstorableBatchError
from kubenetmon.exporterhelper.retry import backoff_intervals
from kubenetmon.flows import FlowBatch

__all__ = ["QueuedExporter"]

# Attempts of a block whose push raised neither RetryableError nor PermanentError.
_UNEXPECTED_ATTEMPTS = 3


class QueuedExporter(BaseComponent):
    """Base of exporters: ``consume`` queues, workers ``push`` blocks with retries."""

    def __init__(self, settings: CreateSettings, config: ExporterHelperConfig) -> None:
        self.settings = settings
        self.helper_config = config
        self.log = settings.logger
        q = config.sending_queue
        self._queue_capacity = q.capacity if q.enabled else 1
        self._queue: SendingQueue | None = None
        self._workers: list[threading.Thread] = []
        self._drain = threading.Event()  # flush what is queued, then stop
        self._abort = threading.Event()  # stop now (deadline passed)
        self._accepting = False
        self._shutdown_done = False
        self._failed: str | None = None
        self._rng = random.Random()
        m = settings.metrics
        self.m_sent = m.counter("exporter_sent_flows_total", "Flows delivered by an exporter.")
        self.m_send_failed = m.counter(
            "exporter_send_failed_flows_total", "Flows in send attempts that failed (retried or not)."
        )
        self.m_dropped = m.counter(
            "exporter_dropped_flows_total", "Flows an exporter gave up on, by reason.", ["reason"]
        )
        self.m_refused = m.counter(
            "exporter_enqueue_refused_flows_total", "Flows refused because the queue was full (backpressure)."
        )
        self.m_retries = m.counter("exporter_retries_total", "Send attempts that were retries.")
        self.m_duplicates = m.counter(
            "exporter_duplicate_batches_total",
            "Named batches not queued because this exporter already held or delivered them (producer re-sends).",
        )
        self.m_queue_size = m.gauge("exporter_queue_size", "Batches in the sending queue (incl. in flight).")
        self.m_queue_capacity = m.gauge("exporter_queue_capacity", "Capacity of the sending queue, in batches.")
        self.m_queue_bytes = m.gauge("exporter_queue_bytes", "Bytes of the persistent queue on disk.")
        self.m_latency = m.histogram(
            "exporter_send_latency_seconds",
            "Duration of successful send attempts.",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.m_queue_capacity.set(self._queue_capacity)

    # --- for subclasses --------------------------------------------------------------

    def open(self) -> None:
        """Create the client. Called by ``start`` before any push."""

    def close(self) -> None:
        """Close the client. Called by ``shutdown`` after the last push."""

    def push(self, block: Block, timeout: float) -> None:
        """Send one block within ``timeout`` seconds. ``block.id`` is an idempotency key."""
        raise NotImplementedError

    # --- lifecycle -------------------------------------------------------------------

    def start(self, host: Host) -> None:
        q = self.helper_config.sending_queue
        directory = q.directory if q.enabled and q.storage == "persistent" else None
        self._queue = SendingQueue(self._queue_capacity, directory, q.dedup_window)
        recovered = self._queue.size()
        if recovered:
            self.log.info("persistent queue holds %d batches from a previous run; sending them first", recovered)
        self.open()
        self._accepting = True
        workers = q.num_consumers if q.enabled else 1
        for i in range(workers):
            t = threading.Thread(target=self._work, name=f"{self.settings.id}-sender-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        self._update_gauges()

    def shutdown(self, timeout: float = 30.0) -> None:
        if self._shutdown_done:
            return
        self._shutdown_done = True
        self._accepting = False
        if self._queue is None:
            return
        self._drain.set()
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._workers):
            self._abort.set()
            for t in self._workers:
                t.join(5.0)
        lost = self._queue.close()
        if lost:
            n = sum(len(b) for b in lost)
            self.m_dropped.labels(reason="shutdown").inc(n)
            self.log.error(
                "shutdown deadline passed with %d flows in the memory queue: dropped; use "
                "sending_queue.storage: persistent to keep them across restarts",
                n,
            )
        elif self._queue.size():
            self.log.warning("%d batches stay in the persistent queue for the next start", self._queue.size())
        self.close()

    def is_ready(self) -> bool:
        return self._accepting

    def health(self) -> str | None:
        if self._failed:
            return self._failed
        if self._accepting and not all(t.is_alive() for t in self._workers):
            return "a sending worker died"
        return None

    # --- data path -------------------------------------------------------------------

    def consume(self, batch: FlowBatch) -> None:
        if batch.is_empty():
            return
        if not self._accepting or self._queue is None:
            raise BackpressureError(f"exporter {self.settings.id} is not running")
        q = self.helper_config.sending_queue
        if not q.enabled:
            self._send_now(batch)
            return
        timeout = q.block_timeout if q.full_policy == "block" else 0.0
        try:
            result = self._queue.put(batch, timeout)
        except UnstorableBatchError as exc:
            batch = self._storable_part(batch, exc)
            if batch.is_empty():
                return
            result = self._queue.put(batch, timeout)
        if result == PutResult.DUPLICATE:
            self.m_duplicates.inc()
            self.log.info(
                "batch %s was already queued or delivered (re-sent by its producer after a restart?): "
                "not queued again", batch.batch_id,
            )
            return
        if result:
            self._update_gauges()
            return
        n = len(batch)
        if q.full_policy == "drop":
            self.m_dropped.labels(reason="queue_full").inc(n)
            self.log.warning("sending queue full (%d batches): dropped %d flows", self._queue.capacity, n)
            return
        self.m_refused.inc(n)
        raise BackpressureError(f"sending queue of exporter {self.settings.id} is full", retry_after=1.0)

    def _drop_permanent(self, n: int, exc: PermanentError) -> None:
        self.m_send_failed.inc(n)
        self.m_dropped.labels(reason="permanent_error").inc(n)
        self.log.error("dropping %d flows: permanent error: %s", n, exc)

    def _send_now(self, batch: FlowBatch) -> None:
        """No queue: push in the caller's thread, so that its acknowledgement means delivered.

        A retryable failure goes back as backpressure: the producer (an agent,
        through the otlp receiver) keeps the batch and retries it, to this or
        another replica, and the peer deduplicates it by the batch's name
        (``Block.key``). Gateway replicas then hold no state to lose.
        """
        n = len(batch)
        block = Block(uuid.uuid4().hex, [batch])
        started = time.monotonic()
        try:
            self.push(block, self.helper_config.timeout)
        except PermanentError as exc:
            self._drop_permanent(n, exc)
            return
        except Exception as exc:
            self.m_send_failed.inc(n)
            self.m_refused.inc(n)
            retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
            raise BackpressureError(
                f"exporter {self.settings.id} could not deliver the batch now: {exc}",
                retry_after=retry_after if retry_after is not None else 1.0,
            ) from exc
        self.m_latency.observe(time.monotonic() - started)
        self.m_sent.inc(n)

    def _storable_part(self, batch: FlowBatch, exc: Exception) -> FlowBatch:
        """The rows of ``batch`` that fit the batch contract; the others are counted and logged.

        Only for the row-wise helper's bad input (an int where text belongs, a
        port of 70000…), which cannot be written to a persistent queue. Row by
        row, so slow, but only when a batch failed to serialise.
        """
        def fits(view: str, row: object) -> bool:
            try:
                FlowBatch(**{view: [row]}).to_ipc()  # type: ignore[arg-type]
            except Exception:  # any failure to serialise the row is the answer
                return False
            return True

        records = [r for r in batch.records if fits("records", r)]
        flows = [f for f in batch.flows if fits("flows", f)]
        dropped = len(batch) - len(records) - len(flows)
        self.m_dropped.labels(reason="invalid_row").inc(dropped)
        self.log.error(
            "dropped %d of %d rows that do not fit the batch contract (%s); the rest is queued", dropped,
            len(batch), exc,
        )
        return FlowBatch(records=records, flows=flows, batch_id=batch.batch_id)

    def _update_gauges(self) -> None:
        if self._queue is not None:
            self.m_queue_size.set(self._queue.size())
            self.m_queue_bytes.set(self._queue.bytes_on_disk)

    def _work(self) -> None:
        assert self._queue is not None
        b = self.helper_config.batch
        try:
            while not self._abort.is_set():
                block = self._queue.take_block(b.max_flows, b.max_wait, b.align, self._drain)
                if block is None:
                    if self._drain.is_set():
                        return
                    continue
                self._send(block)
                self._update_gauges()
        except Exception as exc:  # a bug, not a send failure: make it visible in health
            self._failed = f"sending worker crashed: {exc!r}"
            self.log.exception("sending worker crashed")

    def _send(self, block: Block) -> None:
        assert self._queue is not None
        n = len(block)
        retry = self.helper_config.retry_on_failure
        waits = backoff_intervals(retry, self._rng)
        attempt = 0
        unexpected = 0
        while True:
            started = time.monotonic()
            try:
                self.push(block, self.helper_config.timeout)
            except PermanentError as exc:
                self._drop_permanent(n, exc)
                self._queue.ack(block)
                return
            except Exception as exc:
                self.m_send_failed.inc(n)
                retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
                if not isinstance(exc, RetryableError):
                    # Neither retryable nor permanent by the exporter's own judgement: a bug or
                    # bad data more often than an outage. Retried a few times (it may be
                    # transient), never for the whole retry window (which may be forever).
                    unexpected += 1
                    if unexpected >= _UNEXPECTED_ATTEMPTS:
                        self.m_dropped.labels(reason="unexpected_error").inc(n)
                        self.log.error(
                            "dropping %d flows: the exporter failed %d times with an unexpected error; the "
                            "last one follows (a bug: please report it)", n, unexpected, exc_info=exc,
                        )
                        self._queue.ack(block)
                        return
                wait = next(waits, None) if retry.enabled else None
                if wait is None:
                    self.m_dropped.labels(reason="retries_exhausted").inc(n)
                    self.log.error("dropping %d flows after %d attempts: %s", n, attempt + 1, exc)
                    self._queue.ack(block)
                    return
                if retry_after is not None:
                    wait = max(wait, retry_after)
                self.log.warning("send of %d flows failed (%s); retrying in %.1fs", n, exc, wait)
                if self._abort.wait(wait):
                    self._give_up_at_shutdown(block)
                    return
                attempt += 1
                self.m_retries.inc()
                continue
            self.m_latency.observe(time.monotonic() - started)
            self.m_sent.inc(n)
            self._queue.ack(block)
            return

    def _give_up_at_shutdown(self, block: Block) -> None:
        assert self._queue is not None
        # Persistent: the block stays on disk and is re-sent with the same id
        # after a restart. Memory: close() counts it with the rest of what is lost.
        self._queue.release(block)
        if self.helper_config.sending_queue.storage == "persistent":
            self.log.warning("block %s stays on disk; it will be re-sent with the same id after restart", block.id)
