"""The shared writer of benchmark sections keeps every other section of docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_REPORT = Path(__file__).resolve().parents[1] / "bench" / "_report.py"
_spec = importlib.util.spec_from_file_location("bench_report", _REPORT)
assert _spec is not None and _spec.loader is not None
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

A = ("<!-- a:start -->", "<!-- a:end -->")
B = ("<!-- b:start -->", "<!-- b:end -->")


def test_a_section_is_replaced_in_place_and_others_are_kept(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    report.replace_section(*A, f"{A[0]}\nfirst a\n{A[1]}", doc)
    report.replace_section(*B, f"{B[0]}\nb\n{B[1]}", doc)
    report.replace_section(*A, f"{A[0]}\nsecond a\n{A[1]}\n", doc)
    text = doc.read_text()
    assert "first a" not in text and "second a" in text and "\nb\n" in text
    assert text.index("second a") < text.index("\nb\n")  # replaced where it was, not appended


def test_a_section_without_its_markers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must begin with"):
        report.replace_section(*A, "no markers", tmp_path / "benchmarks.md")
