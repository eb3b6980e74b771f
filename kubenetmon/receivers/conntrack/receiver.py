"""The ``conntrack`` receiver: dumps, DESTROY events, deltas, checkpoints, delivery."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from kubenetmon import netns
from kubenetmon._memory import LARGE_ROWS, mmap_large_blocks, release_free_memory
from kubenetmon.component import BaseComponent, Consumer, CreateSettings, Host
from kubenetmon.errors import BackpressureError
from kubenetmon.flows import FlowBatch
from kubenetmon.receivers.conntrack import _checkpoint, _netlink
from kubenetmon.receivers.conntrack._accounting import AddressFilter, DeltaTracker
from kubenetmon.receivers.conntrack._checkpoint import PendingBatch
from kubenetmon.receivers.conntrack._layout import LayoutCache, MalformedMessage, decode_counters
from kubenetmon.receivers.conntrack.config import ConntrackConfig

__all__ = ["ConntrackReceiver", "KernelSettingsError"]

# Accounting gives counters, events the final counters of ended entries, and
# timestamps each entry's start time, which tells apart two entries with the
# same tuple and CTA_ID (a reused source port: see _layout). New namespaces
# start with all three off (events: 2, "auto").
_SYSCTLS = ("net.netfilter.nf_conntrack_acct", "net.netfilter.nf_conntrack_events")
_TIMESTAMP_SYSCTL = "net.netfilter.nf_conntrack_timestamp"
SANITY_RETRY_SECONDS = 10.0


class KernelSettingsError(RuntimeError):
    """Conntrack accounting or events are off and we may not (or could not) switch them on."""


class ConntrackReceiver(BaseComponent):
    """Meters every TCP/UDP conntrack entry of one network namespace into per-interval deltas (Arrow records).

    One worker thread runs the cycle (dump → deltas → events → checkpoint →
    deliver) every ``interval``; one listener thread only queues raw DESTROY
    events. See the README for the accounting and restart guarantees.
    """

    def __init__(self, settings: CreateSettings, config: ConntrackConfig, consumer: Consumer) -> None:
        self._config = config
        self._consumer = consumer
        self._log = settings.logger
        self._zero = config.accounting == "zero_on_dump"
        self._tracker = DeltaTracker(
            config.node_name,
            AddressFilter(config.include_cidrs, config.exclude_cidrs),
            vanished_ttl_ns=int(config.vanished_ttl * 1e9),
            tombstone_ttl_ns=int(max(30.0, 3 * config.interval) * 1e9),
            zero_on_dump=self._zero,
        )
        self._checkpoint_path = Path(config.checkpoint_path) if config.checkpoint_path else None
        self._carried: list[PendingBatch] = []  # restored batches: delivered again under their own id
        self._checkpoint_ns = 0
        self._dump_sock: socket.socket | None = None
        self._event_sock: socket.socket | None = None
        self._events: list[bytes] = []
        self._events_lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._ready = False
        self._failure: str | None = None
        self._seq = 0
        self._shutdown_done = False
        m = settings.metrics
        self._m_entries = m.gauge("conntrack_entries", "Entries in the latest conntrack dump.")
        self._m_active = m.gauge("conntrack_active_flows", "Entries whose counters changed in the latest cycle.")
        self._m_dump_seconds = m.gauge("conntrack_dump_duration_seconds", "Wall time of the latest dump and parse.")
        self._m_cycle_seconds = m.histogram(
            "conntrack_cycle_duration_seconds", "Wall time of a whole cycle (dump, events, checkpoint, delivery).",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
        )
        self._m_events = m.counter("conntrack_events_total", "DESTROY events received.")
        self._m_overflows = m.counter(
            "conntrack_event_overflows_total", "Times the event socket reported a lost message (ENOBUFS)."
        )
        self._m_state = m.gauge("conntrack_state_entries", "Entries remembered for deltas (table + vanished).")
        self._m_checkpoint_age = m.gauge(
            "conntrack_checkpoint_age_seconds", "Age of the last successful checkpoint, as of the latest cycle."
        )
        self._m_checkpoint_bytes = m.gauge("conntrack_checkpoint_bytes", "Size of the latest checkpoint.")
        self._m_ignored = m.counter(
            "conntrack_ignored_entries_total",
            "Entries not sent, by reason: protocol, no_counters, idle, loopback, cidr, no_baseline, malformed.",
            labels=("reason",),
        )
        self._m_records = m.counter(
            "conntrack_records_total", "Records (one per connection and interval) delivered downstream."
        )
        self._m_errors = m.counter(
            "conntrack_errors_total", "Failures by kind: dump, checkpoint, consume, cycle.", labels=("kind",)
        )
        self._m_backpressure = m.counter(
            "conntrack_backpressure_total", "Deliveries refused by the consumer (kept and retried next cycle)."
        )
        self._m_resets = m.counter(
            "conntrack_counter_resets_total", "Entries whose kernel counters went down (zeroed by another tool)."
        )
        self._m_expired = m.counter(
            "conntrack_vanished_expired_total", "Vanished entries dropped after vanished_ttl without an event."
        )

    # --- lifecycle ------------------------------------------------------------------

    def start(self, host: Host) -> None:
        self.open()
        self._worker = threading.Thread(target=self._run, name="conntrack-dump", daemon=True)
        self._worker.start()

    def open(self) -> None:
        """Everything :meth:`start` does except starting the dump thread.

        Checks (or sets) the kernel settings, opens the sockets, restores the
        checkpoint and starts the event listener. Tests and the benchmark
        call this and then drive :meth:`cycle` themselves.
        """
        self._check_kernel_settings()
        mmap_large_blocks()  # a big table's arrays go back to the kernel when freed (kubenetmon/_memory.py)
        try:
            self._dump_sock = _netlink.open_dump_socket(self._config.netns)
            if self._config.events and not self._zero:
                self._event_sock = _netlink.open_event_socket(self._config.netns, self._config.event_buffer_bytes)
                self._event_sock.settimeout(0.25)
        except PermissionError as exc:
            self._close_sockets()
            raise PermissionError(
                f"cannot open a conntrack netlink socket ({exc}); the agent needs CAP_NET_ADMIN "
                "(the chart grants it) and must run in the node's network namespace (hostNetwork)"
            ) from exc
        try:
            self._restore()
        except BaseException:
            self._close_sockets()
            raise
        if self._event_sock is not None:
            self._listener = threading.Thread(target=self._listen, name="conntrack-events", daemon=True)
            self._listener.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop; the dump thread runs a last cycle (deliver or checkpoint what is pending) first."""
        if self._shutdown_done:
            return
        self._shutdown_done = True
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self._worker is not None:
            self._worker.join(max(0.0, deadline - time.monotonic()))
        elif self._dump_sock is not None and self._tracker.has_baseline:
            self._cycle_safely()  # opened and driven by hand: the same last cycle
        if self._listener is not None:
            self._listener.join(max(0.0, min(2.0, deadline - time.monotonic())))
        self._close_sockets()

    def is_ready(self) -> bool:
        return self._ready

    def health(self) -> str | None:
        return self._failure

    def _close_sockets(self) -> None:
        for sock in (self._dump_sock, self._event_sock):
            if sock is not None:
                sock.close()
        self._dump_sock = self._event_sock = None

    # --- kernel settings and sanity -----------------------------------------------------

    def _check_kernel_settings(self) -> None:
        name = self._config.netns

        # zero_on_dump keeps no state, so it needs no entry identity beyond one dump.
        sysctls = _SYSCTLS if self._zero else (*_SYSCTLS, _TIMESTAMP_SYSCTL)

        def read_write() -> list[str]:
            wrong = []
            for key in sysctls:
                path = Path("/proc/sys") / key.replace(".", "/")
                try:
                    value = path.read_text().strip()
                except FileNotFoundError:
                    raise KernelSettingsError(
                        f"{path} does not exist: load the nf_conntrack module (modprobe nf_conntrack)"
                    ) from None
                if value == "1":
                    continue
                if self._config.configure_sysctls:
                    try:
                        path.write_text("1\n")
                        self._log.info("set %s=1 (was %s)%s", key, value, f" in netns {name}" if name else "")
                        continue
                    except OSError as exc:
                        self._log.error("cannot set %s=1: %s", key, exc)
                wrong.append(f"{key}={value}")
            return wrong

        if name:
            with netns.entered(name):
                wrong = read_write()
        else:
            wrong = read_write()
        if wrong:
            prefix = f"ip netns exec {name} " if name else ""
            raise KernelSettingsError(
                f"conntrack accounting/events/timestamps are off ({', '.join(wrong)}): run "
                f"`{prefix}sysctl -w {'=1 '.join(sysctls)}=1` on the node"
                + ("" if self._config.configure_sysctls else ", or set configure_sysctls: true")
                + ". Without them byte counters stay zero, connections ending between dumps are lost, and "
                "connections reusing a source port are mixed up."
            )

    def sanity_check(self) -> bool:
        """The original's check (reference §3.2): some entry must show non-zero counters.

        A node that just booted may not have had accounting switched on yet,
        so until ``uptime_wait`` seconds of uptime we wait and retry.
        """
        while not self._stop.is_set():
            if self._any_counters():
                self._log.info("confirmed that conntrack reports packet and byte counters")
                return True
            uptime = _uptime()
            if uptime >= self._config.uptime_wait:
                self._failure = (
                    "conntrack is reporting only empty counters (is nf_conntrack_acct=1 on the node, and is "
                    "there traffic?); set skip_sanity_check: true to start anyway"
                )
                self._log.error("%s; system uptime is %.0f s", self._failure, uptime)
                return False
            self._log.info(
                "uptime is %.0f s, below uptime_wait %.0f s; checking conntrack counters again in %.0f s",
                uptime, self._config.uptime_wait, SANITY_RETRY_SECONDS,
            )
            self._stop.wait(SANITY_RETRY_SECONDS)
        return False

    def _any_counters(self) -> bool:
        layouts = LayoutCache()
        found = False
        for buf in self._dump(zero_counters=False):  # a look only: never reset counters here
            off, n = 0, len(buf)
            while off + 16 <= n and not found:
                length = int.from_bytes(buf[off : off + 4], "little")
                if int.from_bytes(buf[off + 4 : off + 6], "little") == _netlink.CT_NEW:
                    with contextlib.suppress(MalformedMessage):
                        layout = layouts.find(buf, off, length)
                        if not layout.ignore and any(decode_counters(layout.counters(buf, off))):
                            found = True
                off += (length + 3) & ~3
        return found

    # --- threads ----------------------------------------------------------------------

    def _listen(self) -> None:
        """The event thread: receive and queue raw buffers, nothing else (it must keep up)."""
        sock = self._event_sock
        assert sock is not None
        # One event per datagram, a few hundred bytes each: receive into one
        # reusable buffer and keep a copy of what arrived.
        buffer = bytearray(1 << 16)
        view = memoryview(buffer)
        recv_into, lock, events, received = sock.recv_into, self._events_lock, self._events, self._m_events
        while not self._stop.is_set():
            try:
                n = recv_into(buffer)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._m_overflows.inc()
                    self._log.warning("DESTROY events were lost (socket buffer overflow)")
                    continue
                if self._stop.is_set():
                    return
                self._failure = f"DESTROY event listener failed: {exc}"
                self._log.error(self._failure)
                return
            data = view[:n].tobytes()
            with lock:
                events.append(data)
            received.inc()

    def _take_events(self) -> list[bytes]:
        with self._events_lock:
            taken = self._events[:]
            self._events.clear()
        return taken

    def _run(self) -> None:
        try:
            if not self._config.skip_sanity_check and not self.sanity_check():
                return
            self._ready = True
            next_at = time.monotonic()
            while not self._stop.is_set():
                self._cycle_safely()
                next_at += self._config.interval
                now = time.monotonic()
                if next_at < now:  # overran: skip the missed ticks, as the original does
                    next_at = now + self._config.interval
                self._stop.wait(next_at - now)
            # Graceful stop: one last cycle, so the events and deltas up to now are delivered or checkpointed.
            self._cycle_safely()
        except Exception as exc:  # the worker must never die silently
            self._failure = f"conntrack worker died: {exc!r}"
            self._log.exception("conntrack worker died")

    def _cycle_safely(self) -> None:
        try:
            self.cycle()
        except Exception:
            self._m_errors.labels(kind="cycle").inc()
            self._log.exception("conntrack cycle failed; retrying next interval")

    # --- one cycle --------------------------------------------------------------------

    def _dump(self, zero_counters: bool | None = None) -> Iterator[bytes]:
        """The buffers of one dump; zeroing the counters follows ``accounting`` unless told."""
        assert self._dump_sock is not None
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return _netlink.dump(self._dump_sock, self._seq, self._zero if zero_counters is None else zero_counters)

    def cycle(self) -> None:
        """Dump, account, apply events, checkpoint, deliver. Runs in the worker thread."""
        started = time.monotonic()
        tracker = self._tracker
        tracker.begin_dump(time.time_ns())
        baseline = not tracker.has_baseline and not self._zero
        if self._event_sock is not None:
            # Ended before this dump: settle their final counters first, so that the
            # dump never compares an entry with its predecessor's counters.
            tracker.apply_events(self._take_events())
        try:
            for buf in self._dump():
                tracker.feed(buf)
            tracker.end_dump()
        except (OSError, MalformedMessage) as exc:
            self._m_errors.labels(kind="dump").inc()
            self._log.error("conntrack dump failed: %s", exc)
            tracker.abort_dump()
            if self._dump_sock is not None:
                _netlink.drain(self._dump_sock)
            return
        dumped = time.monotonic()
        if self._event_sock is not None:
            tracker.apply_events(self._take_events())  # ended during the dump
        stats = tracker.stats
        if stats.entries >= LARGE_ROWS:
            release_free_memory()  # the join's temporaries, before the checkpoint and the delivery
        if baseline:
            self._log.info(
                "first dump (%d entries) sets the baseline; deltas are reported from the next one%s",
                stats.entries, "" if self._checkpoint_path is None else " (no checkpoint to resume from)",
            )
        self._m_entries.set(stats.entries)
        self._m_active.set(stats.records)
        self._m_dump_seconds.set(dumped - started)
        self._m_state.set(len(tracker.state))
        for reason, n in stats.ignored.items():
            self._m_ignored.labels(reason=reason).inc(n)
        if stats.counter_resets:
            self._m_resets.inc(stats.counter_resets)
            self._log.warning(
                "%d conntrack entries' counters went down since the last dump (zeroed by another tool, e.g. "
                "`conntrack -L -z`?); counted what accumulated since the reset, earlier traffic may be lost",
                stats.counter_resets,
            )
        if stats.expired:
            self._m_expired.inc(stats.expired)
        self._deliver()
        if stats.entries >= LARGE_ROWS:
            release_free_memory()  # the dump's and the join's temporary arrays (kubenetmon/_memory.py)
        self._m_cycle_seconds.observe(time.monotonic() - started)

    def _deliver(self) -> None:
        # Restored batches keep their ids (they may have reached the consumer
        # before a crash); the fresh records get a new id every cycle, since
        # merging changes their content and a refused batch never arrived.
        tracker = self._tracker
        fresh = PendingBatch(uuid.uuid4().hex, tracker.unsent_table()) if len(tracker.unsent) else None
        batches = [*self._carried, fresh] if fresh is not None else list(self._carried)
        self._write_checkpoint(batches)
        for batch in batches:
            try:
                self._consumer.consume(FlowBatch(batch.records, batch_id=batch.id))
            except BackpressureError as exc:
                self._m_backpressure.inc()
                self._log.warning(
                    "consumer refused %d records (%s); keeping them for the next cycle", batch.num_records, exc
                )
                return
            except Exception:
                self._m_errors.labels(kind="consume").inc()
                self._log.exception("consumer failed; keeping %d records for the next cycle", batch.num_records)
                return
            self._m_records.inc(batch.num_records)
            if batch is fresh:
                tracker.clear_unsent()
            else:
                self._carried.remove(batch)
            if self._checkpoint_path is not None:
                try:
                    _checkpoint.mark_delivered(self._checkpoint_path, batch.id)
                except OSError as exc:
                    self._m_errors.labels(kind="checkpoint").inc()
                    self._log.error("cannot record delivery of batch %s: %s", batch.id, exc)

    # --- checkpoints --------------------------------------------------------------------

    def _write_checkpoint(self, batches: list[PendingBatch]) -> None:
        if self._checkpoint_path is None:
            return
        tracker = self._tracker
        try:
            size = _checkpoint.save(
                self._checkpoint_path,
                _checkpoint.Checkpoint(tracker.node, tracker.dump_ns, tracker.state, batches),
            )
        except OSError as exc:
            self._m_errors.labels(kind="checkpoint").inc()
            self._log.error("cannot write checkpoint %s: %s", self._checkpoint_path, exc)
        else:
            self._checkpoint_ns = time.time_ns()
            self._m_checkpoint_bytes.set(size)
        if self._checkpoint_ns:
            self._m_checkpoint_age.set((time.time_ns() - self._checkpoint_ns) / 1e9)

    def _restore(self) -> None:
        if self._checkpoint_path is None:
            return
        saved = _checkpoint.load(self._checkpoint_path)
        if saved is None:
            self._log.info("no checkpoint at %s: the first dump sets the baseline", self._checkpoint_path)
            return
        if saved.node != self._config.node_name:
            self._log.warning(
                "checkpoint %s was written by node %r, we are %r; using it anyway",
                self._checkpoint_path, saved.node, self._config.node_name,
            )
        tracker = self._tracker
        if saved.stale_state:
            self._log.warning(
                "checkpoint %s was written by an older version whose entry keys lack the start time: its "
                "undelivered batches are re-sent, but the first dump sets a new baseline", self._checkpoint_path,
            )
        elif not self._zero:
            tracker.state = saved.state
            tracker.has_baseline = True
        tracker.dump_ns = saved.dump_ns
        self._carried = saved.batches
        self._checkpoint_ns = time.time_ns()
        self._log.info(
            "resumed from checkpoint %s: %d entries, %d undelivered batches (re-sent with their ids)",
            self._checkpoint_path, len(saved.state), len(saved.batches),
        )


def _uptime() -> float:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
