"""Range-file mutations through the real cloud_prefix processor (issue 16: fuzz suite, item 13).

A processor starts from small samples of the real provider files
(``shared/data/cloud-ranges``); then one source's file is replaced by a
mutation of its sample (JSON structure: values replaced, keys dropped or
renamed, lists emptied or duplicated; or bytes: truncation, insertion,
deep nesting, huge numbers) and re-read. Either the mutation is a usable
document (counted ``loaded``, a new table) or it is refused: counted with a
failure result, logged at ERROR naming the file, and the last good table
kept. Never an exception. Bounded for CI; set ``KUBENETMON_FUZZ_EXAMPLES``
for a longer run.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubenetmon.component import Kind
from kubenetmon.identity import Identity
from kubenetmon.processors.cloud_prefix import CloudPrefixConfig, CloudPrefixProcessor, factory
from kubenetmon.processors.cloud_prefix.sources import STANDARD_FILE_NAMES
from kubenetmon.testing import SinkConsumer, StaticHost, create_component, create_settings
from tests.fuzz.fuzzkit import fuzz_settings, mutate, paths
from tests.processors.cloud_prefix.ranges import RANGES_DIR

EXAMPLES = 150  # per test; KUBENETMON_FUZZ_EXAMPLES overrides (tests/fuzz/fuzzkit.py)
FUZZ = fuzz_settings(EXAMPLES)
SOURCES = ("aws", "gcp", "azure", "oracle")
FAILURES = {"invalid_json", "invalid_schema", "file_error"}


def _sample(source: str) -> Any:
    """A fresh copy of :func:`_sample_text` parsed."""
    return json.loads(_sample_text(source))


@functools.cache
def _sample_text(source: str) -> bytes:
    """A few entries of each list of the real document: the real shape, small enough to fuzz quickly."""
    path = RANGES_DIR / STANDARD_FILE_NAMES[source]
    if not path.exists():
        pytest.skip(f"the real provider file {path} is not here (shared/data/cloud-ranges)")
    doc = json.loads(path.read_bytes())
    if source == "aws":
        doc["prefixes"], doc["ipv6_prefixes"] = doc["prefixes"][:6], doc["ipv6_prefixes"][:6]
    elif source == "gcp":
        doc["prefixes"] = doc["prefixes"][:6] + [p for p in doc["prefixes"] if "ipv6Prefix" in p][:3]
    elif source == "azure":
        doc["values"] = doc["values"][:2] + [g for g in doc["values"] if g["properties"].get("systemService")][:2]
        for group in doc["values"]:
            group["properties"]["addressPrefixes"] = group["properties"]["addressPrefixes"][:4]
    else:
        doc["regions"] = doc["regions"][:3]
        for region in doc["regions"]:
            region["cidrs"] = region["cidrs"][:4]
    return json.dumps(doc).encode()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _processor(directory: Path) -> Iterator[tuple[CloudPrefixProcessor, _Records]]:
    for source in SOURCES:
        (directory / STANDARD_FILE_NAMES[source]).write_bytes(_sample_text(source))
    config = CloudPrefixConfig.model_validate({
        "files_dir": str(directory), "offline": True, "sources": {"google": {"enabled": False},
                                                                  "oracle": {"enabled": True}},
    })
    settings_ = create_settings(Kind.PROCESSOR, "cloud_prefix", identity=Identity())
    records = _Records()
    settings_.logger.addHandler(records)
    proc: CloudPrefixProcessor = create_component(factory, config, consumer=SinkConsumer(), settings=settings_)
    proc.start(StaticHost())
    try:
        yield proc, records
    finally:
        proc.shutdown()
        settings_.logger.removeHandler(records)


def check_refresh(source: str, body: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp, _processor(Path(tmp)) as (proc, logged):
        good = proc.table
        assert good is not None and sorted(proc._loader.loaded()) == sorted(SOURCES)
        path = Path(tmp) / STANDARD_FILE_NAMES[source]
        path.write_bytes(body)
        os.utime(path, (time.time() + 10, time.time() + 10))
        swapped = proc.refresh_now()  # an exception here is the bug this suite hunts
        counts = {r: proc._m_refreshes.value(source=source, result=r) for r in (*FAILURES, "loaded")}
        if counts["loaded"] == 2:  # once at start, once now: a usable document
            assert swapped and proc.table is not good
            assert sum(counts[r] for r in FAILURES) == 0
        else:
            assert counts["loaded"] == 1 and not swapped
            assert sum(counts[r] for r in FAILURES) == 1, counts
            assert proc.table is good  # the last good table is kept
            assert any(str(path) in m for m in logged.messages), logged.messages


# --- JSON structure mutations -----------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=20),
    st.sampled_from(["", "10.0.0.0/8", "2600::/200", "1.2.3.4/33", "::/0", "0.0.0.0/0", "us-east-1", " GLOBAL "]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def structure_mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    source = draw(st.sampled_from(SOURCES))
    doc = _sample(source)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(doc)))
        how = draw(st.sampled_from(["replace", "drop", "rename", "empty", "duplicate"]))
        doc = mutate(doc, path, how, draw(values))
    return source, json.dumps(doc).encode()


@FUZZ
@given(structure_mutated())
def test_structure_mutations_load_or_are_counted_and_keep_the_last_good_table(case: tuple[str, bytes]) -> None:
    check_refresh(*case)


# --- byte mutations -----------------------------------------------------------------------

TOKENS = [b"[" * 5000, b"{\"a\":" * 3000, b"9" * 5000, b"1e999", b"-1e999", b"NaN", b"Infinity", b"\xff\xfe",
          b"\x00", b"\"\\ud800\"", b"null", b"[]", b"{}", b",", b"\"", b"\xef\xbb\xbf"]


@st.composite
def byte_mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    source = draw(st.sampled_from(SOURCES))
    body = bytearray(_sample_text(source))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(body)))
        how = draw(st.sampled_from(["truncate", "token", "bytes", "delete"]))
        if how == "truncate":
            del body[at:]
        elif how == "token":
            body[at:at] = draw(st.sampled_from(TOKENS))
        elif how == "bytes":
            body[at:at] = draw(st.binary(min_size=1, max_size=6))
        else:
            del body[at : at + draw(st.integers(1, 30))]
    return source, bytes(body)


@FUZZ
@given(byte_mutated())
def test_byte_mutations_load_or_are_counted_and_keep_the_last_good_table(case: tuple[str, bytes]) -> None:
    check_refresh(*case)
