"""Report output: aligned tables for a terminal, JSON or CSV for programs."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from datetime import UTC, date, datetime
from ipaddress import IPv4Address
from typing import Any

__all__ = ["Result", "dollars", "human_bytes", "render_csv", "render_json", "render_table"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


class Result:
    """The answer to one question: a title, column names and rows."""

    def __init__(self, name: str, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.name = name
        self.title = title
        self.columns = list(columns)
        self.rows = [[_plain(v) for v in row] for row in rows]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def _plain(value: Any) -> Any:
    """JSON-friendly values; datetimes in UTC (the table's buckets are UTC)."""
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, IPv4Address):
        return str(value)
    return value


def human_bytes(n: float) -> str:
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover - loop always returns


def dollars(value: float) -> str:
    """USD for people: cents from a dollar up, else enough digits to see small amounts (test clusters)."""
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    # Two significant digits in plain notation: $0.50, $0.050, $0.0000050.
    decimals = min(12, max(2, 1 - math.floor(math.log10(abs(value)))))
    return f"${value:.{decimals}f}"


def _cell(column: str, value: Any) -> str:
    if isinstance(value, int | float) and column.endswith("_usd"):
        return dollars(value)
    if isinstance(value, int) and column.endswith("bytes"):
        return human_bytes(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value == "":
        return "-"
    return str(value)


def render_table(result: Result) -> str:
    """A titled, aligned table; byte counts in KiB/MiB/GiB, numbers right-aligned."""
    header = [c.upper() for c in result.columns]
    cells = [[_cell(c, v) for c, v in zip(result.columns, row, strict=True)] for row in result.rows]
    numeric = [
        bool(result.rows) and all(isinstance(row[i], int | float) for row in result.rows)
        for i in range(len(result.columns))
    ]
    widths = [max([len(header[i])] + [len(r[i]) for r in cells]) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ).rstrip()

    out = [f"{result.title} ({len(result.rows)} rows)", line(header)]
    out += [line(r) for r in cells] if cells else ["(no data in this window)"]
    return "\n".join(out) + "\n"


def render_json(results: Sequence[Result]) -> str:
    body: Any = (
        results[0].records() if len(results) == 1 else {r.name: r.records() for r in results}
    )
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


def render_csv(result: Result) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows(result.rows)
    return buf.getvalue()
