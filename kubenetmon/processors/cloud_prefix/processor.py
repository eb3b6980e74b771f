"""The ``cloud_prefix`` processor: where does each flow's remote address lie?

Decision (reference §6, with §12.2 items 11 and 18 fixed):

1. Private space (RFC 1918, 100.64.0.0/10, link-local, loopback, ``0.0.0.0``,
   the original's multicast ranges, IPv6 loopback/link-local/ULA, and the
   configured ``vpc_cidrs``) → ``INTRA_VPC``, remote cloud/region = local.
2. Else the longest cloud prefix holding the address:
   local cloud in the local region or ``global`` → ``INTRA_REGION``; local
   cloud elsewhere → ``INTER_REGION``; local cloud without a region →
   ``UNKNOWN`` (counted; the original dropped the flow); another cloud or
   no match → ``PUBLIC_INTERNET``.

Classification is columnar (DESIGN §4.2): the table is flattened at load
into disjoint ranges (:mod:`.range_index`), each distinct remote address of
a batch is looked up once with ``searchsorted``, and the outcome of each
range's prefix (a few thousand distinct ones) is decided once per table. The
batch's flow view gets new ``connection_class`` and ``remote_cloud`` /
``remote_region`` / ``remote_cloud_service`` columns, and the local cloud,
region, cluster and cell where they are empty; no Python object is made per
flow. :meth:`RemoteClassifier.classify` answers one address (pytricia), for
diagnostics and as the reference the columnar path is tested against.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from kubenetmon.component import BaseComponent, Consumer, CreateSettings, Host
from kubenetmon.compute import compute_slot
from kubenetmon.errors import BackpressureError, ConfigError, ConfigProblem
from kubenetmon.flows import ConnectionClass, FlowBatch, with_columns
from kubenetmon.processors.cloud_prefix.config import CloudPrefixConfig
from kubenetmon.processors.cloud_prefix.fetch import RangeLoader
from kubenetmon.processors.cloud_prefix.range_index import RangeIndex, address_keys
from kubenetmon.processors.cloud_prefix.sources import GLOBAL
from kubenetmon.processors.cloud_prefix.table import PRIVATE, Detail, PrefixTable

__all__ = [
    "PRIVATE_CIDRS",
    "BatchClassification",
    "Classification",
    "CloudPrefixProcessor",
    "RemoteClassifier",
    "fill_empty",
    "region_problem",
]

# The original's IsPrivate/IsLocal/IsLoopback set (reference §6) plus 100.64.0.0/10 (§12.2 item 11) and IPv6.
PRIVATE_CIDRS: tuple[str, ...] = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8",
    "0.0.0.0/32", "224.0.0.0/24", "239.0.0.0/8", "232.0.0.0/8",
    "::/128", "::1/128", "fe80::/10", "fc00::/7",
)
# Holes inside the ranges above: the original excludes 232.0.0.0/24 from 232/8.
_NOT_PRIVATE: tuple[str, ...] = ("232.0.0.0/24",)


class Classification(NamedTuple):
    """The outcome for one remote address."""

    connection_class: str
    cloud: str
    region: str
    cloud_service: str


_CLASSES: tuple[str, ...] = tuple(c.value for c in ConnectionClass)
_UNKNOWN_CLASS = _CLASSES.index(ConnectionClass.UNKNOWN)
_INVALID = Classification(ConnectionClass.UNKNOWN, "", "", "")


class BatchClassification(NamedTuple):
    """The outcome for one address column: dictionary columns for the flow view, and counts for metrics."""

    connection_class: pa.DictionaryArray
    cloud: pa.DictionaryArray
    region: pa.DictionaryArray
    cloud_service: pa.DictionaryArray
    class_counts: dict[str, int]  # rows per connection class
    distinct: int  # distinct known addresses looked up
    distinct_unknown: int  # of those, classified UNKNOWN
    invalid: int  # rows whose address is not known (null)


class RemoteClassifier:
    """Classifies addresses against private space and one :class:`PrefixTable` (immutable once built).

    Private space is folded into a copy of the table's tries, so one
    longest-prefix lookup answers everything; that copy is also flattened
    into a :class:`RangeIndex` for whole columns. The outcome per distinct
    :class:`Detail` (a few thousand) is computed once, as strings for
    :meth:`classify` and as integer columns (index into per-field string
    lists) for :meth:`classify_column`.
    """

    def __init__(self, table: PrefixTable | None, cloud: str, region: str, vpc_cidrs: tuple[str, ...] = ()) -> None:
        self.table = table
        self._cloud = cloud
        self._region = region
        private = (*PRIVATE_CIDRS, *vpc_cidrs)
        combined = table.with_private(private, _NOT_PRIVATE) if table else PrefixTable({}, None, private, _NOT_PRIVATE)
        self._lookup = combined.lookup  # its tries are built on the first single-address lookup only
        self._outcomes: dict[Detail | None, Classification] = {
            PRIVATE: Classification(ConnectionClass.INTRA_VPC, cloud, region, ""),
            None: Classification(ConnectionClass.PUBLIC_INTERNET if table else ConnectionClass.UNKNOWN, "", "", ""),
        }
        self._index = RangeIndex(combined.entries())
        # One row per index code, then one for "address not known" (null).
        outcomes = [self._outcome(value) for value in self._index.values] + [_INVALID]
        self._invalid_code = len(outcomes) - 1
        self._fields: list[tuple[pa.Array, npt.NDArray[np.int32]]] = []  # per output field: strings, index per code
        for i in range(4):
            strings = sorted({o[i] for o in outcomes}) if i else list(_CLASSES)
            position = {text: n for n, text in enumerate(strings)}
            self._fields.append((
                pa.array(strings, pa.utf8()), np.array([position[o[i]] for o in outcomes], dtype=np.int32),
            ))
        self._class_of = self._fields[0][1]

    def _outcome(self, value: object) -> Classification:
        if value is None or value is PRIVATE:
            return self._outcomes[value]
        assert isinstance(value, Detail)
        return self._decide(value)

    def classify_column(self, addresses: pa.Array | pa.ChunkedArray) -> BatchClassification:
        """Classify an address column (``fixed_size_binary(16)``, null = not known) as a whole."""
        if isinstance(addresses, pa.ChunkedArray):
            addresses = addresses.combine_chunks()
        # Distinct addresses by hashing (Arrow), ~6x cheaper than sorting 16-byte keys with np.unique.
        encoded = addresses.dictionary_encode()
        distinct, _ = address_keys(encoded.dictionary)
        distinct_codes = self._index.codes(distinct)
        invalid = addresses.null_count
        if invalid:  # a null index (address not known) reads the extra last entry
            per_index = np.append(distinct_codes, np.int32(self._invalid_code))
            codes = per_index[encoded.indices.fill_null(len(distinct)).to_numpy()]
        else:
            codes = distinct_codes[encoded.indices.to_numpy()]
        # The codes present in this batch (a handful) decide each column's dictionary, so a batch carries
        # only its own strings, each once.
        present = np.unique(distinct_codes)
        if invalid:
            present = np.append(present, self._invalid_code)
        compact = np.zeros(self._invalid_code + 1, dtype=np.int32)
        compact[present] = np.arange(len(present), dtype=np.int32)
        rows = compact[codes]
        columns = []
        for strings, index_of in self._fields:
            used, position = np.unique(index_of[present], return_inverse=True)
            columns.append(pa.DictionaryArray.from_arrays(
                pa.array(position.astype(np.int32)[rows], pa.int32()), strings.take(pa.array(used, pa.int32()))
            ))
        class_rows = np.bincount(self._class_of[codes], minlength=len(_CLASSES))
        return BatchClassification(
            columns[0], columns[1], columns[2], columns[3],
            class_counts={_CLASSES[i]: int(n) for i, n in enumerate(class_rows) if n},
            distinct=len(distinct),
            distinct_unknown=int(np.count_nonzero(self._class_of[distinct_codes] == _UNKNOWN_CLASS)),
            invalid=invalid,
        )

    def classify(self, address: str) -> Classification:
        """Raises ValueError when ``address`` is not an IP address."""
        detail = self._lookup(address)
        outcome = self._outcomes.get(detail)
        if outcome is None and detail is not None:  # None and PRIVATE are always in _outcomes
            outcome = self._outcomes[detail] = self._decide(detail)
        assert outcome is not None
        return outcome

    def _decide(self, detail: Detail) -> Classification:
        if detail.cloud != self._cloud or not self._cloud:
            cls = ConnectionClass.PUBLIC_INTERNET
        elif not detail.region:
            cls = ConnectionClass.UNKNOWN
        elif detail.region in (GLOBAL, self._region):
            cls = ConnectionClass.INTRA_REGION
        else:
            cls = ConnectionClass.INTER_REGION
        return Classification(cls, detail.cloud, detail.region, detail.service)


def region_problem(table: PrefixTable, cloud: str, region: str) -> str | None:
    """Why ``region`` cannot be checked against ``cloud``'s ranges, or None when it is there."""
    if not cloud:
        return None
    regions = [r for r in table.regions(cloud) if r and r != GLOBAL]
    if region and region in regions:
        return None
    shown = ", ".join(regions) if regions else "(none: no ranges of this cloud are loaded)"
    what = f"region {region!r} is not" if region else "no region is"
    return (
        f"{what} among the {cloud} regions of the loaded cloud ranges, so intra-region traffic cannot be "
        f"told from inter-region traffic; set service::identity::region to one of: {shown} "
        "(or set skip_region_check: true)"
    )


def fill_empty(column: pa.DictionaryArray, value: str) -> pa.DictionaryArray:
    """``column`` with every empty string replaced by ``value`` (a dictionary change, not a per-row one).

    Vector operations over the dictionary: a batch's string columns share one
    dictionary of every string the batch uses (thousands), so a Python pass
    over it per column cost more than the classification itself.
    """
    dictionary = column.dictionary
    empty = pc.fill_null(pc.equal(dictionary, ""), False).to_numpy(zero_copy_only=False)
    if not value or not empty.any():
        return column
    target = pc.index(dictionary, value).as_py()
    if target < 0:
        target = len(dictionary)
        dictionary = pa.concat_arrays([dictionary, pa.array([value], dictionary.type)])
    remap = np.arange(len(dictionary), dtype=np.int32)
    remap[np.flatnonzero(empty)] = target
    return pa.DictionaryArray.from_arrays(pa.array(remap).take(column.indices), dictionary)


class _State(NamedTuple):
    classifier: RemoteClassifier


class CloudPrefixProcessor(BaseComponent):
    """Sets ``connection_class`` and the remote's cloud, region and cloud service on every flow."""

    def __init__(self, settings: CreateSettings, config: CloudPrefixConfig, consumer: Consumer) -> None:
        self._settings = settings
        self._config = config
        self._next = consumer
        self._log = settings.logger
        self._identity = settings.identity
        m = settings.metrics
        self._m_prefixes = m.gauge("cloud_prefix_prefixes", "Prefixes in the current table.", ["cloud", "family"])
        self._m_refreshes = m.counter(
            "cloud_prefix_refreshes_total", "Loads and downloads of range documents by result.", ["source", "result"]
        )
        self._m_builds = m.counter("cloud_prefix_table_builds_total", "Tables built, by result.", ["result"])
        self._m_lookups = m.counter("cloud_prefix_lookups_total", "Remote addresses classified.", ["cache"])
        self._m_classes = m.counter("cloud_prefix_flows_total", "Flows classified, by class.", ["connection_class"])
        self._m_unknown = m.counter(
            "cloud_prefix_unknown_total", "Remote endpoints classified UNKNOWN (a local-cloud range with no region, "
            "an invalid address, or no table yet).", ["reason"]
        )
        self._m_loaded_at = m.gauge("cloud_prefix_table_loaded_timestamp_seconds", "When the table was built.")
        self._m_age = m.gauge("cloud_prefix_table_age_seconds", "Seconds since the current table was built.")
        self._stop = threading.Event()
        self._loader = RangeLoader(config, self._log, self._count_result, stop=self._stop)
        self._state = _State(self._classifier(None))
        self._problem: str | None = None
        self._thread: threading.Thread | None = None
        self._refresh_lock = threading.Lock()
        self._gauged: set[tuple[str, str]] = set()  # (cloud, family) labels of the prefixes gauge

    # --- lifecycle -----------------------------------------------------------

    def start(self, host: Host) -> None:
        self._loader.load_local()
        if self._loader.covers(self._identity.cloud):
            problem = self._install(self._loader.build())
            if problem is not None:
                raise ConfigError([ConfigProblem(f"processors::{self._settings.id}", problem)])
        elif not self._needs_download():
            raise ConfigError([ConfigProblem(
                f"processors::{self._settings.id}",
                f"no usable range document for cloud {self._identity.cloud!r} in the files or cache, and "
                "downloads are off; run `kubenetmon cloud-ranges fetch --out DIR` where the Internet is "
                "reachable and set files_dir: DIR",
            )])
        self._thread = threading.Thread(target=self._refresh_loop, name=f"{self._settings.id}-refresh", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def is_ready(self) -> bool:
        return self._state.classifier.table is not None

    def health(self) -> str | None:
        return self._problem

    @property
    def table(self) -> PrefixTable | None:
        return self._state.classifier.table

    # --- refresh -------------------------------------------------------------

    def _needs_download(self) -> bool:
        return not self._config.offline and any(s.url for _, s in self._config.sources.items() if s.enabled)

    def _count_result(self, source: str, result: str) -> None:
        self._m_refreshes.labels(source=source, result=result).inc()

    def _classifier(self, table: PrefixTable | None) -> RemoteClassifier:
        return RemoteClassifier(table, self._identity.cloud, self._identity.region, self._config.vpc_cidrs)

    def _install(self, table: PrefixTable) -> str | None:
        """Swap ``table`` in unless the region check rejects it; return the rejection."""
        if not self._config.skip_region_check:
            problem = region_problem(table, self._identity.cloud, self._identity.region)
            if problem is not None:
                self._m_builds.labels(result="rejected").inc()
                return problem
        counts = table.counts()
        for cloud, family in self._gauged - counts.keys():  # a cloud the new table no longer has
            self._m_prefixes.labels(cloud=cloud, family=family).set(0)
        for (cloud, family), count in counts.items():
            self._m_prefixes.labels(cloud=cloud, family=family).set(count)
        self._gauged |= counts.keys()
        # One assignment: consume() sees the old or the new state, never a mix.
        self._state = _State(self._classifier(table))
        self._m_builds.labels(result="swapped").inc()
        self._m_loaded_at.set(table.loaded_at)
        self._problem = None
        self._log.info(
            "cloud ranges: table of %d prefixes from %s", len(table),
            ", ".join(f"{k} ({v})" for k, v in sorted(self._loader.loaded().items())),
        )
        return None

    def refresh_now(self, force: bool = True) -> bool:
        """One refresh (download or re-read every source; without ``force`` only those due).

        True when a new table was swapped in.
        """
        with self._refresh_lock:
            changed = self._loader.refresh(force)
            if not changed or not self._loader.covers(self._identity.cloud):
                return False
            problem = self._install(self._loader.build())
            if problem is not None:
                self._log.error("cloud ranges: refreshed table rejected, keeping the last good one: %s", problem)
                if self.table is None:
                    self._problem = problem
                return False
            return True

    def _refresh_loop(self) -> None:
        failures = 0
        while True:
            # After a refresh that left a source without fresh data, back off (15 s doubling, at most
            # 15 min) instead of asking again at once; otherwise sleep until the next document is due.
            wait = min(self._config.refresh_interval, 15.0 * 2 ** min(failures - 1, 6)) if failures else (
                self._loader.due_in())
            if self._stop.wait(wait):
                return
            try:
                self.refresh_now(force=False)
            except Exception:  # a bug here must not kill refreshes for good
                self._log.exception("cloud ranges: refresh failed")
            pending = bool(self._loader.missing()) or self._loader.due_in() == 0.0 or not self.is_ready()
            failures = failures + 1 if pending else 0
            self._m_age.set(time.time() - self.table.loaded_at if self.table else 0)

    # --- data path -----------------------------------------------------------

    def consume(self, batch: FlowBatch) -> None:
        state = self._state
        if not batch.num_flows:
            self._next.consume(batch)
            return
        if state.classifier.table is None and self._config.not_ready == "backpressure":
            raise BackpressureError(f"{self._settings.id}: no cloud range table loaded yet", retry_after=5.0)
        with compute_slot():
            flows = batch.flow_table()
            result = state.classifier.classify_column(flows.column("remote_address"))
            identity = self._identity
            local = {
                f"local_{name}": fill_empty(flows.column(f"local_{name}"), getattr(identity, name))
                for name in ("cloud", "region", "cluster", "cell")
            }
            batch.flows = with_columns(flows, {
                "connection_class": result.connection_class,
                "remote_cloud": result.cloud,
                "remote_region": result.region,
                "remote_cloud_service": result.cloud_service,
                **local,
            })
        self._count(result, state.classifier.table, flows.num_rows)
        self._next.consume(batch)

    def _count(self, result: BatchClassification, table: PrefixTable | None, rows: int) -> None:
        for cls, n in result.class_counts.items():
            self._m_classes.labels(connection_class=cls).inc(n)
        # "miss": a distinct address looked up in this batch; "hit": a row that shared one.
        if result.distinct:
            self._m_lookups.labels(cache="miss").inc(result.distinct)
        if rows - result.invalid - result.distinct:
            self._m_lookups.labels(cache="hit").inc(rows - result.invalid - result.distinct)
        if result.invalid:
            self._m_unknown.labels(reason="invalid_address").inc(result.invalid)
        if result.distinct_unknown:
            self._m_unknown.labels(reason="no_table" if table is None else "no_region").inc(result.distinct_unknown)
        if table is not None:
            self._m_age.set(time.time() - table.loaded_at)
