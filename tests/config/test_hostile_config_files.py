"""Config files that once ended in a traceback or ate minutes and gigabytes (issue 16, item 4).

Each goes through the real command in a child process with a memory and a
time bound, so a regression shows as a failure here, not as a hung CI job.
"""

from __future__ import annotations

import codecs
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from kubenetmon.config import load_files
from kubenetmon.config.safe_yaml import MAX_DEPTH, MAX_VALUES
from kubenetmon.errors import ConfigError

GOOD = (
    "receivers: {otlp: {grpc: {endpoint: '127.0.0.1:0'}}}\nexporters: {debug: {}}\n"
    "service: {pipelines: {flows: {receivers: [otlp], exporters: [debug]}}, telemetry: {metrics: {address: ''}}}\n"
)
MEMORY_LIMIT = 1 << 30  # the command needs ~130 MB; the billion-laughs file took 2.4 GB before the fix
TIME_LIMIT = 60.0  # seconds; it took 177 s before the fix


def _billion_laughs(levels: int = 9) -> bytes:
    # 444 bytes that expand to 9**9 (387 million) strings.
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return ("\n".join(lines) + "\n").encode()


HOSTILE: dict[str, tuple[bytes, str]] = {
    "not_utf8": (b'receivers: {otlp: {grpc: {endpoint: "\xff\xfe"}}}\n', "is not UTF-8 text (byte 0xff at offset 37"),
    "utf16": (codecs.BOM_UTF16_LE + GOOD.encode("utf-16-le"), "is UTF-16 text; save it as UTF-8"),
    "recursive_alias": (b"receivers: &x {otlp: *x}\n", "holds a recursive alias"),
    "deep_nesting": (b"receivers: " + b"[" * 3000 + b"]" * 3000 + b"\n", f"nests deeper than {MAX_DEPTH} levels"),
    "deep_block_maps": (
        "".join(f"{' ' * i}k{i}:\n" for i in range(200)).encode() + b" " * 200 + b"v: 1\n",
        f"nests deeper than {MAX_DEPTH} levels",
    ),
    "huge_integer": (b"service: {shutdown_timeout: " + b"9" * 5000 + b"}\n", "an integer of 5000 digits"),
    "billion_laughs": (_billion_laughs(), f"expands to more than {MAX_VALUES:,} values"),
    "impossible_date": (b"service: {shutdown_timeout: 2001-02-30}\n", "holds a value that cannot be represented"),
}


def _bounded() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _kubenetmon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubenetmon", *args],
        check=False, capture_output=True, text=True, timeout=TIME_LIMIT, preexec_fn=_bounded,
    )


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_config_file_exits_2_naming_the_file(tmp_path: Path, case: str, command: str) -> None:
    body, expected = HOSTILE[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(body)
    result = _kubenetmon(command, "--config", str(path))
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"config file '{path}' " in result.stderr
    assert expected in result.stderr


def test_every_hostile_file_is_reported_along_with_the_others(tmp_path: Path) -> None:
    paths = []
    for case, (body, _) in sorted(HOSTILE.items()):
        paths.append(tmp_path / f"{case}.yaml")
        paths[-1].write_bytes(body)
    with pytest.raises(ConfigError) as info:
        load_files(paths)
    messages = [p.message for p in info.value.problems]
    assert len(messages) == len(HOSTILE)
    for path, (_, (_, expected)) in zip(paths, sorted(HOSTILE.items()), strict=True):
        assert any(m.startswith(f"config file '{path}' ") and expected in m for m in messages), expected


def test_aliases_within_the_bound_still_work(tmp_path: Path) -> None:
    # Anchors and merge keys are legitimate YAML; only their runaway expansion is refused.
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "x-grpc: &grpc {endpoint: '127.0.0.1:0'}\n"
        "receivers: {otlp: {grpc: *grpc}, otlp/b: {grpc: {<<: *grpc, endpoint: '127.0.0.1:1'}}}\n"
        + "big: &big [" + ",".join(["1"] * 1000) + "]\nmore: [" + ",".join(["*big"] * 100) + "]\n"
    )
    data = load_files([path])
    assert data["receivers"]["otlp"] == {"grpc": {"endpoint": "127.0.0.1:0"}}
    assert data["receivers"]["otlp/b"] == {"grpc": {"endpoint": "127.0.0.1:1"}}
    assert len(data["more"]) == 100


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(codecs.BOM_UTF8 + GOOD.encode())
    result = _kubenetmon("validate", "--config", str(path))
    assert result.returncode == 0, result.stderr
