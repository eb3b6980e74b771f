"""The ``connection_flags`` processor: sets ``connection_flags`` entries from configured rules, on columns.

Each rule becomes a boolean mask over the batch's flow view (DESIGN §4.2):
CIDRs are a :class:`~kubenetmon.processors.cloud_prefix.range_index.RangeIndex`
over the address column, ports are numpy comparisons, globs and sets are
evaluated once per distinct string of a dictionary column and spread to the
rows by its indices. The new ``connection_flags`` map column is assembled
from the old entries and the rules' results with array operations; no
Python object is made per flow.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from kubenetmon.component import BaseComponent, Consumer, CreateSettings
from kubenetmon.flows import FlowBatch, with_columns
from kubenetmon.processors.cloud_prefix.range_index import NO_MATCH, RangeIndex, address_keys
from kubenetmon.processors.connection_flags.config import ConnectionFlagsConfig, FlagRule, parse_port_range

__all__ = ["CompiledRule", "ConnectionFlagsProcessor", "merge_flags", "string_mask"]

Mask = npt.NDArray[np.bool_]
Condition = Callable[[pa.RecordBatch], Mask]


def string_mask(column: pa.Array, predicate: Callable[[str], bool]) -> Mask:
    """``predicate`` of every row of a dictionary (or plain) string column, evaluated once per distinct value."""
    if not isinstance(column, pa.DictionaryArray):
        column = column.dictionary_encode()
    per_value = np.array([predicate(text or "") for text in column.dictionary.to_pylist()] + [predicate("")],
                         dtype=np.bool_)
    # A null index (not expected: strings are never null in the flow view) reads as "".
    indices = column.indices.fill_null(len(per_value) - 1).to_numpy(zero_copy_only=False)
    result: Mask = per_value[indices]
    return result


def _cidr_condition(cidrs: tuple[str, ...], column: str) -> Condition:
    index = RangeIndex((cidr, True) for cidr in cidrs)

    def condition(table: pa.RecordBatch) -> Mask:
        keys, valid = address_keys(table.column(column))
        inside: Mask = index.codes(keys) != NO_MATCH
        return inside if valid is None else inside & valid  # a null address is in no CIDR

    return condition


def _port_condition(ports: tuple[int | str, ...], column: str) -> Condition:
    ranges = [parse_port_range(p) for p in ports]
    singles = np.array(sorted({low for low, high in ranges if low == high}), dtype=np.uint16)
    spans = [(low, high) for low, high in ranges if low != high]

    def condition(table: pa.RecordBatch) -> Mask:
        port = table.column(column).to_numpy(zero_copy_only=False)
        mask: Mask = np.isin(port, singles)
        for low, high in spans:
            mask |= (port >= low) & (port <= high)
        return mask

    return condition


def _glob_condition(patterns: tuple[str, ...], column: str) -> Condition:
    match = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)).match
    return lambda table: string_mask(table.column(column), lambda text: match(text) is not None)


def _member_condition(allowed: frozenset[str], column: str) -> Condition:
    return lambda table: string_mask(table.column(column), allowed.__contains__)


class CompiledRule:
    """A :class:`FlagRule` turned into column conditions; :meth:`mask` holds where every condition does."""

    def __init__(self, rule: FlagRule) -> None:
        self.flag = rule.flag
        self.value = rule.value
        conditions: list[Condition] = []
        for side in ("local", "remote"):
            cidrs = getattr(rule, f"{side}_cidrs")
            if cidrs:
                conditions.append(_cidr_condition(cidrs, f"{side}_address"))
            ports = getattr(rule, f"{side}_ports")
            if ports:
                conditions.append(_port_condition(ports, f"{side}_port"))
            for key, field in (("namespaces", "namespace"), ("pods", "pod"), ("apps", "app")):
                patterns = getattr(rule, f"{side}_{key}")
                if patterns:
                    conditions.append(_glob_condition(patterns, f"{side}_{field}"))
        for key, column in (("connection_classes", "connection_class"), ("directions", "direction"),
                            ("transports", "transport")):
            allowed: frozenset[str] = frozenset(getattr(rule, key))
            if allowed:
                conditions.append(_member_condition(allowed, column))
        self._conditions = tuple(conditions)

    def mask(self, table: pa.RecordBatch) -> Mask:
        """Rows of the flow view this rule matches."""
        mask = np.ones(table.num_rows, dtype=np.bool_)
        for condition in self._conditions:
            mask &= condition(table)
        return mask


def merge_flags(column: pa.MapArray, updates: dict[str, tuple[Mask, Mask]]) -> pa.MapArray:
    """``column`` (``map<utf8, bool>``) with ``updates[flag] = (rows, values)`` set: an existing entry of
    that flag in those rows is replaced, the others kept; each row's keys come out sorted.

    Keys are handled as integer codes into a dictionary of the few distinct flag names, so no Python
    object is made per entry.
    """
    n = len(column)
    offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    first, last = int(offsets[0]), int(offsets[-1])  # a sliced column's entries are a slice of the children
    encoded = column.keys.slice(first, last - first).dictionary_encode()
    names: list[str] = encoded.dictionary.to_pylist()
    for flag in updates:
        if flag not in names:
            names.append(flag)
    code_of = {name: i for i, name in enumerate(names)}
    old_codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
    old_rows = np.repeat(np.arange(n), np.diff(offsets))
    old_values = column.items.slice(first, last - first).to_numpy(zero_copy_only=False).astype(np.bool_)
    keep = np.ones(len(old_codes), dtype=np.bool_)
    rows, codes, values = [old_rows], [old_codes], [old_values]
    for flag, (where, value) in updates.items():
        code = code_of[flag]
        keep &= ~((old_codes == code) & where[old_rows])
        chosen = np.flatnonzero(where)
        rows.append(chosen)
        codes.append(np.full(len(chosen), code, dtype=np.int32))
        values.append(value[chosen])
    rows[0], codes[0], values[0] = old_rows[keep], old_codes[keep], old_values[keep]
    all_rows, all_codes, all_values = np.concatenate(rows), np.concatenate(codes), np.concatenate(values)
    by_name = sorted(range(len(names)), key=names.__getitem__)
    rank = np.empty(len(names), dtype=np.int32)
    rank[by_name] = np.arange(len(names), dtype=np.int32)
    order = np.lexsort((rank[all_codes], all_rows))
    new_offsets = np.concatenate(([0], np.cumsum(np.bincount(all_rows, minlength=n)))).astype(np.int32)
    sorted_names = pa.array([names[i] for i in by_name], pa.utf8())
    return pa.MapArray.from_arrays(
        pa.array(new_offsets), sorted_names.take(pa.array(rank[all_codes[order]], pa.int32())),
        pa.array(all_values[order], pa.bool_()), type=column.type,
    )


class ConnectionFlagsProcessor(BaseComponent):
    """For each flag, the first rule that matches a flow sets the flag's value on it."""

    def __init__(self, settings: CreateSettings, config: ConnectionFlagsConfig, consumer: Consumer) -> None:
        self._next = consumer
        self._false_when_unmatched = config.set_false_when_unmatched
        by_flag: dict[str, list[CompiledRule]] = {}
        for rule in config.all_rules():
            by_flag.setdefault(rule.flag, []).append(CompiledRule(rule))
        self._flags = tuple((flag, tuple(rules)) for flag, rules in by_flag.items())
        self._m_set = settings.metrics.counter(
            "connection_flags_set_total", "Flags set on flows, by flag and value.", ["flag", "value"]
        )

    def consume(self, batch: FlowBatch) -> None:
        if not batch.num_flows or not self._flags:
            self._next.consume(batch)
            return
        table = batch.flow_table()
        n = table.num_rows
        updates: dict[str, tuple[Mask, Mask]] = {}
        for flag, rules in self._flags:
            decided = np.zeros(n, dtype=np.bool_)
            values = np.zeros(n, dtype=np.bool_)
            for rule in rules:
                hit = rule.mask(table) & ~decided
                values[hit] = rule.value
                decided |= hit
            if self._false_when_unmatched:
                decided[:] = True  # the rows no rule matched keep values False
            updates[flag] = (decided, values)
            true = int(np.count_nonzero(decided & values))
            if true:
                self._m_set.labels(flag=flag, value="true").inc(true)
            if int(np.count_nonzero(decided)) - true:
                self._m_set.labels(flag=flag, value="false").inc(int(np.count_nonzero(decided)) - true)
        flags = merge_flags(table.column("connection_flags"), updates)
        batch.flows = with_columns(table, {"connection_flags": flags})
        self._next.consume(batch)
