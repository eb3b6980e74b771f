"""Config mutations through the real loader and validator (issue 16: fuzz suite, item 4).

Every input ends as a valid config (exit 0) or as the ConfigError answer
(exit 2, ``error: invalid configuration`` and one problem per line) — never
a traceback, never a hang. Inputs: structured mutations of the shipped
configs (values replaced by arbitrary YAML values, keys dropped, added or
renamed) and byte-level mutations of their text (with YAML's dangerous
tokens: anchors, aliases, merge keys, tags, deep brackets, huge numbers,
non-UTF-8 bytes). Bounded for CI; set ``KUBENETMON_FUZZ_EXAMPLES`` for a
longer run.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from kubenetmon.cli import main
from tests.fuzz.fuzzkit import fuzz_settings, mutate, paths

EXAMPLES = 250  # per test; KUBENETMON_FUZZ_EXAMPLES overrides (tests/fuzz/fuzzkit.py)
FUZZ = fuzz_settings(EXAMPLES)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
SHIPPED = {path.name: path.read_bytes() for path in sorted(CONFIG_DIR.glob("*.yaml"))}
PARSED = {name: yaml.safe_load(body) for name, body in SHIPPED.items()}


def validate_bytes(body: bytes) -> tuple[int, str]:
    """``kubenetmon validate --config F`` in this process; (exit code, stderr)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzzed.yaml"
        path.write_bytes(body)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["validate", "--config", str(path)])
    return code, err.getvalue()


def check(body: bytes) -> None:
    code, err = validate_bytes(body)  # any exception fails the test: that is the traceback we hunt
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.startswith("error: invalid configuration:\n  "), err
        assert "Traceback" not in err


def test_shipped_configs_are_valid() -> None:
    for name, body in SHIPPED.items():
        assert validate_bytes(body) == (0, ""), name


# --- structured mutations ---------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=30), st.sampled_from(["", "0.0.0.0:99999", "${env:UNSET}", "${", "$$", "aws", "x/y/z"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    data: Any = PARSED[draw(st.sampled_from(sorted(PARSED)))]
    for _ in range(draw(st.integers(1, 4))):
        spots = paths(data)
        path = draw(st.sampled_from(spots))
        how = draw(st.sampled_from(["replace", "drop", "rename", "add"]))
        data = mutate(data, path, how, draw(values), draw(st.text(max_size=12)))
    return yaml.safe_dump(data, allow_unicode=True).encode()


@FUZZ
@given(structured())
def test_structured_config_mutations_are_valid_or_exit_2(body: bytes) -> None:
    check(body)


# --- byte-level mutations ---------------------------------------------------------------

TOKENS = [
    b"&a ", b"*a", b"<<: *a\n", b"!!python/object:os.system ", b"!!binary ", b"!!int ", b"!!float ", b"!!timestamp ",
    b"[" * 80, b"{" * 80, b"- " * 80, b"9" * 5000, b"0x" + b"f" * 100, b"2001-02-30", b"1:2:3:4:5:6",
    b"\xff\xfe", b"\x00", b"\t", b"\r", b"\xef\xbb\xbf", b"%YAML 1.1\n---\n", b"---\n", b"...\n", b"? ", b": ",
    b'"\\U0010ffff"', b"'", b'"', b"|\n", b">-\n", b"#", b"${env:X:-${env:Y}}", b".inf", b"-.nan", b"~",
]


@st.composite
def byte_mutated(draw: st.DrawFn) -> bytes:
    body = bytearray(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(body)))
        how = draw(st.sampled_from(["insert_token", "insert_bytes", "delete", "duplicate", "flip"]))
        if how == "insert_token":
            body[at:at] = draw(st.sampled_from(TOKENS))
        elif how == "insert_bytes":
            body[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del body[at : at + draw(st.integers(1, 40))]
        elif how == "duplicate":
            end = min(len(body), at + draw(st.integers(1, 200)))
            body[end:end] = body[at:end] * draw(st.integers(1, 8))
        elif body and at < len(body):
            body[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(body)


@FUZZ
@given(byte_mutated())
def test_byte_level_config_mutations_are_valid_or_exit_2(body: bytes) -> None:
    check(body)


def test_every_dangerous_token_alone_is_valid_or_exit_2() -> None:
    for token in TOKENS:
        check(token)
        check(b"receivers: " + token + b"\n")
