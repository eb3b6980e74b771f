"""The OTAP metrics tables we write and read (OTAP_FORMAL_SPEC v0.1), their schemas and schema ids.

A conntrack record becomes up to four data points (bytes and packets, each
``original`` and ``reply``) with the contract's attributes (DESIGN §4.1): the
same content as the OTLP request, in four related tables:

* ``UNIVARIATE_METRICS`` (root): one row per (resource, metric);
* ``RESOURCE_ATTRS``: the resource attributes (``k8s.node.name`` ...);
* ``NUMBER_DATA_POINTS``: times and the integer value of each point;
* ``NUMBER_DP_ATTRS``: one row per (point, attribute).

Ids carry the field metadata ``encoding`` (``plain`` / ``delta`` /
``quasidelta``); a reader takes a table's default when it is absent.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "ATTRS_SCHEMA",
    "ATTRS_SCHEMA_PLAIN_STR",
    "ATTR_TYPE_BOOL",
    "ATTR_TYPE_BYTES",
    "ATTR_TYPE_DOUBLE",
    "ATTR_TYPE_INT",
    "ATTR_TYPE_STR",
    "ENCODING",
    "METRICS_SCHEMA",
    "METRIC_TYPE_NAMES",
    "METRIC_TYPE_SUM",
    "POINTS_SCHEMA",
    "RESOURCE_ATTRS_SCHEMA",
    "schema_id",
]

ENCODING = b"encoding"
PLAIN, DELTA, QUASI_DELTA = b"plain", b"delta", b"quasidelta"

# pdata's MetricType, named as the OTLP decoder names a metric's data oneof in its messages.
METRIC_TYPE_SUM = 2
METRIC_TYPE_NAMES = {0: "metric without data", 1: "gauge", 2: "sum", 3: "histogram",
                     4: "exponential_histogram", 5: "summary"}

# The attribute tables' ``type`` column (pcommon.ValueType).
ATTR_TYPE_STR, ATTR_TYPE_BOOL, ATTR_TYPE_INT, ATTR_TYPE_DOUBLE, ATTR_TYPE_BYTES = 1, 2, 3, 4, 5


def _id(name: str, type_: pa.DataType, encoding: bytes, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={ENCODING: encoding})


METRICS_SCHEMA = pa.schema([
    _id("id", pa.uint16(), PLAIN),
    pa.field("resource", pa.struct([pa.field("id", pa.uint16())])),
    pa.field("scope", pa.struct([pa.field("id", pa.uint16()), pa.field("name", pa.utf8()),
                                 pa.field("version", pa.utf8())])),
    pa.field("metric_type", pa.uint8(), nullable=False),
    pa.field("name", pa.utf8(), nullable=False),
    pa.field("description", pa.utf8()),
    pa.field("unit", pa.utf8()),
    pa.field("aggregation_temporality", pa.int32()),
    pa.field("is_monotonic", pa.bool_()),
])

RESOURCE_ATTRS_SCHEMA = pa.schema([
    _id("parent_id", pa.uint16(), PLAIN),
    pa.field("key", pa.utf8(), nullable=False),
    pa.field("type", pa.uint8(), nullable=False),
    pa.field("str", pa.utf8()),
])

# Our points are integers: the double_value and flags columns, always null, are left out
# (readers take an absent optional column as null).
POINTS_SCHEMA = pa.schema([
    _id("id", pa.uint32(), DELTA),
    _id("parent_id", pa.uint16(), DELTA),
    pa.field("start_time_unix_nano", pa.timestamp("ns")),
    pa.field("time_unix_nano", pa.timestamp("ns")),
    pa.field("int_value", pa.int64()),
])

# Attribute keys are the contract's eleven names (UInt8 keys suffice); string values (addresses,
# transport, direction) share one dictionary with UInt16 keys while it has room, else plain Utf8.
ATTRS_SCHEMA = pa.schema([
    _id("parent_id", pa.uint32(), QUASI_DELTA),
    pa.field("key", pa.dictionary(pa.uint8(), pa.utf8()), nullable=False),
    pa.field("type", pa.uint8(), nullable=False),
    pa.field("str", pa.dictionary(pa.uint16(), pa.utf8())),
    pa.field("int", pa.int64()),
])
ATTRS_SCHEMA_PLAIN_STR = ATTRS_SCHEMA.set(3, pa.field("str", pa.utf8()))

_SHORT = {
    pa.uint8(): "U8", pa.uint16(): "U16", pa.uint32(): "U32", pa.uint64(): "U64", pa.int32(): "I32",
    pa.int64(): "I64", pa.float64(): "F64", pa.bool_(): "Bol", pa.utf8(): "Str", pa.binary(): "Bin",
    pa.timestamp("ns"): "Tns",
}


def _short(type_: pa.DataType) -> str:
    if isinstance(type_, pa.DictionaryType):
        return f"Dic<{_short(type_.index_type)},{_short(type_.value_type)}>"
    if isinstance(type_, pa.StructType):
        return "{" + ",".join(sorted(f"{f.name}:{_short(f.type)}" for f in type_)) + "}"
    return _SHORT.get(type_, str(type_))


def schema_id(schema: pa.Schema) -> str:
    """The spec's schema id: the sorted ``name:Type`` list (``id:U16,key:Dic<U8,Str>,...``)."""
    return ",".join(sorted(f"{f.name}:{_short(f.type)}" for f in schema))
