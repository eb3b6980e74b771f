"""Precedence between prefixes listed more than once, and the longest-prefix-match table.

The original (reference §7.2) let the last writer win in several places, so
its table depended on the order of the documents. Here every decision is a
rank, so the same documents in any order give the same table:

* **Within one source** the entry with the smallest rank key wins:

  - AWS: service priority ``s3`` < any other specific service < ``amazon``
    < ``ec2`` (the original's ``{s3: -1, other: 0, amazon: 1, ec2: 2}``),
    then a regional entry before ``global``, then by service and region name.
  - Azure (the original's rules (b)–(d), on normalised names, which fixes the
    ``AzureStorage`` comparison bug): ``azurestorage`` first, then an entry
    with a ``systemService`` before the generic ``azurecloud`` /
    ``azureservice`` tags, then regional before ``global``, then by name.
  - GCP, Google, Oracle: regional before ``global``, then by name (Oracle
    puts ``object_storage`` first, like S3).

* **Across sources** the winners are merged in the fixed order AWS, GCP,
  Google, Azure, Oracle with the original's overwrite rules: GCP and Google
  overwrite what came before (so Google's ``googleservice``/``global`` wins
  over an identical ``cloud.json`` prefix; a more specific ``cloud.json``
  prefix still wins by longest match), Azure overwrites only by its rules
  (b)–(d), Oracle (not in the original) only fills prefixes nobody listed.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import pytricia

from kubenetmon.processors.cloud_prefix.sources import (
    AZURE_CLOUD,
    AZURE_SERVICE,
    GLOBAL,
    SOURCE_NAMES,
    RangeEntry,
)

__all__ = [
    "PRIVATE",
    "Detail",
    "PrefixTable",
    "RangeEntryMap",
    "build_table",
    "build_table_from_resolved",
    "merge_sources",
    "resolve_source",
]

RangeEntryMap = dict[str, RangeEntry]  # prefix -> the entry that wins it within one source

_AWS_PRIORITY = {"s3": -1, "amazon": 1, "ec2": 2}
_AZURE_STORAGE = "azurestorage"
_AZURE_GENERIC = frozenset({AZURE_CLOUD, AZURE_SERVICE, ""})


class Detail(NamedTuple):
    """What a prefix says about an address: ``(cloud, service, region)``, normalised."""

    cloud: str
    service: str
    region: str


def _rank(source: str, e: RangeEntry) -> tuple[int, int, int, str, str]:
    """Smaller wins. The string tail makes ties deterministic."""
    regional = 1 if e.region == GLOBAL else 0
    if source == "aws":
        return (_AWS_PRIORITY.get(e.service, 0), 0, regional, e.service, e.region)
    if source == "azure":
        return (0 if e.service == _AZURE_STORAGE else 1, 0 if e.system_service else 1, regional, e.service, e.region)
    if source == "oracle":
        return (0 if e.service == "object_storage" else 1, 0, regional, e.service, e.region)
    return (0, 0, regional, e.service, e.region)


def resolve_source(source: str, entries: Iterable[RangeEntry]) -> RangeEntryMap:
    """One winning entry per prefix of one source, independent of the entries' order."""
    best: dict[str, RangeEntry] = {}
    best_rank: dict[str, tuple[int, int, int, str, str]] = {}
    for e in entries:
        rank = _rank(source, e)
        held = best_rank.get(e.prefix)
        if held is None or rank < held:
            best[e.prefix] = e
            best_rank[e.prefix] = rank
    return best


def _azure_overwrites(saved: RangeEntry, new: RangeEntry) -> bool:
    """The original's Azure rules (b)–(d) against a prefix another source already holds."""
    return (
        (saved.service in _AZURE_GENERIC and new.system_service)  # (b)
        or new.service == _AZURE_STORAGE  # (c), normalised: matches the real "AzureStorage"
        or (saved.region == GLOBAL and new.region != GLOBAL and saved.service == new.service)  # (d)
    )


def merge_sources(resolved: Mapping[str, Mapping[str, RangeEntry]]) -> dict[str, Detail]:
    """Merge per-source winners (from :func:`resolve_source`) in the fixed source order."""
    merged: dict[str, RangeEntry] = {}
    for source in SOURCE_NAMES:
        winners = resolved.get(source)
        if not winners:
            continue
        if not merged:
            merged.update(winners)
            continue
        for prefix, entry in winners.items():
            saved = merged.get(prefix)
            if (
                saved is None
                or source in ("gcp", "google")
                or (source == "azure" and _azure_overwrites(saved, entry))
            ):
                merged[prefix] = entry
    # Share one Detail per distinct value: ~100k prefixes map to a few thousand.
    interned: dict[tuple[str, str, str], Detail] = {}
    out: dict[str, Detail] = {}
    for prefix, e in merged.items():
        key = (e.cloud, e.service, e.region)
        d = interned.get(key)
        if d is None:
            d = interned[key] = Detail(*key)
        out[prefix] = d
    return out


# What lookup() answers inside private space (see PrefixTable's ``private``).
PRIVATE = Detail("", "private", "")


class PrefixTable:
    """An immutable longest-prefix-match table of cloud ranges, IPv4 and IPv6.

    Two tries, one per family: pytricia compares bits only, so in a single
    128-bit trie an IPv4 address would match IPv6 prefixes that share its
    leading bits (``38.0.31.5`` inside ``2600:1f00::/24``).

    ``private`` CIDRs are folded into the same tries so that one lookup
    answers both questions: they map to :data:`PRIVATE`, and so does every
    cloud prefix inside them (private space is decided first, as in the
    original). ``not_private`` CIDRs are holes in it (no match).
    """

    def __init__(
        self,
        details: Mapping[str, Detail],
        loaded_at: float | None = None,
        private: Iterable[str] = (),
        not_private: Iterable[str] = (),
    ) -> None:
        self._details = details
        self._private = tuple(private)
        self._not_private = tuple(not_private)
        self._tries: tuple[Any, Any] | None = None  # built on first use (see _trie)
        self._tries_lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        for prefix, detail in details.items():
            self._counts[(detail.cloud, "ipv6" if ":" in prefix else "ipv4")] += 1
        self._regions: dict[str, frozenset[str]] = {}
        for detail in set(details.values()):
            self._regions.setdefault(detail.cloud, frozenset())
            self._regions[detail.cloud] |= {detail.region}
        self.loaded_at = time.time() if loaded_at is None else loaded_at

    def _trie(self, address: str) -> Any:
        """The trie of ``address``'s family, the pair built on first use.

        Lazily: the gateway classifies whole columns through a
        :class:`~.range_index.RangeIndex` flattened from :meth:`entries` once
        per table, and a trie pair of the real files holds ~33 MB; only
        single-address lookups (the row-wise helper, diagnostics) need them kept.
        """
        tries = self._tries
        if tries is None:
            with self._tries_lock:
                tries = self._tries
                if tries is None:
                    tries = self._tries = self._build_tries()
        return tries[1] if ":" in address else tries[0]

    def _build_tries(self) -> tuple[Any, Any]:
        v4, v6 = pytricia.PyTricia(32), pytricia.PyTricia(128)
        for prefix, detail in self._details.items():
            (v6 if ":" in prefix else v4)[prefix] = detail
        for cidr in self._private:
            trie = v6 if ":" in cidr else v4
            trie[cidr] = PRIVATE
            for inner in trie.children(cidr):
                trie[inner] = PRIVATE
        for cidr in self._not_private:
            trie = v6 if ":" in cidr else v4
            if not trie.has_key(cidr):
                trie[cidr] = None
        return v4, v6

    def lookup(self, address: str) -> Detail | None:
        """The detail of the longest prefix holding ``address``; None when no prefix does.

        Raises ValueError for text that is not an IP address.
        """
        result: Detail | None = self._trie(address).get(address)
        return result

    def with_private(self, private: Iterable[str], not_private: Iterable[str] = ()) -> PrefixTable:
        """The same cloud prefixes with private space folded in (a new table; this one is unchanged)."""
        return PrefixTable(self._details, self.loaded_at, private, not_private)

    def entries(self) -> Iterator[tuple[str, Detail | None]]:
        """Every prefix of both tries with its value (PRIVATE, and None for the holes, included)."""
        tries = self._tries if self._tries is not None else self._build_tries()  # not kept when only iterated
        for trie in tries:
            for prefix in trie:
                yield prefix, trie[prefix]

    def lookup_prefix(self, address: str) -> str | None:
        """The longest prefix holding ``address`` (for diagnostics)."""
        result: str | None = self._trie(address).get_key(address)
        return result

    def __len__(self) -> int:
        """Cloud prefixes (private CIDRs not included)."""
        return sum(self._counts.values())

    def counts(self) -> dict[tuple[str, str], int]:
        """Prefixes per ``(cloud, family)``, family ``ipv4`` or ``ipv6``."""
        return dict(self._counts)

    def clouds(self) -> list[str]:
        return sorted(self._regions)

    def regions(self, cloud: str) -> list[str]:
        """The regions a cloud's prefixes name (``global`` included), sorted."""
        return sorted(self._regions.get(cloud, ()))


def build_table(entries_by_source: Mapping[str, Iterable[RangeEntry]], loaded_at: float | None = None) -> PrefixTable:
    """Resolve, merge and index the parsed entries of several sources."""
    resolved = {source: resolve_source(source, entries) for source, entries in entries_by_source.items()}
    return build_table_from_resolved(resolved, loaded_at)


def build_table_from_resolved(resolved: Mapping[str, RangeEntryMap], loaded_at: float | None = None) -> PrefixTable:
    """Merge and index per-source winners (what :class:`~.fetch.RangeLoader` keeps)."""
    return PrefixTable(merge_sources(resolved), loaded_at)
