"""Writing a benchmark's section of ``docs/benchmarks.md``, shared by every ``bench/*_bench.py``.

Each benchmark owns the text between its two HTML-comment markers; running
it again replaces that text and leaves every other section as it was.
"""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def replace_section(start: str, end: str, section: str, doc: Path = DOC) -> None:
    """Put ``section`` (which begins with ``start`` and ends with ``end``) where the old one was.

    A document without the markers gets the section appended.
    """
    section = section.strip("\n")
    if not (section.startswith(start) and section.endswith(end)):
        raise ValueError(f"a section must begin with {start!r} and end with {end!r}")
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
