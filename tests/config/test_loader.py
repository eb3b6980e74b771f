from __future__ import annotations

from pathlib import Path

import pytest

from kubenetmon.config import expand_env, load_files, merge
from kubenetmon.errors import ConfigError

ENV = {"HOST": "ch.example", "PORT": "8443", "EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${env:HOST}", "ch.example"),
        ("${HOST}", "ch.example"),
        ("https://${env:HOST}:${PORT}/db", "https://ch.example:8443/db"),
        ("${env:MISSING:-fallback}", "fallback"),
        ("${MISSING:-}", ""),
        ("${env:EMPTY:-fallback}", ""),  # set but empty is still set
        ("cost: $$5", "cost: $5"),
        ("$${env:HOST}", "${env:HOST}"),  # an escaped reference stays literal
        ("no references", "no references"),
    ],
)
def test_env_references_are_substituted(text: str, expected: str) -> None:
    assert expand_env({"k": text}, ENV) == {"k": expected}


def test_substitution_reaches_nested_maps_and_lists() -> None:
    data = {"a": {"b": ["${HOST}", 3, {"c": "${PORT}"}]}}
    assert expand_env(data, ENV) == {"a": {"b": ["ch.example", 3, {"c": "8443"}]}}


def test_every_unset_variable_is_reported_with_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        expand_env({"exporters": {"clickhouse": {"endpoint": "${env:DSN}", "password": "${PW}"}}}, ENV)
    messages = [str(p) for p in info.value.problems]
    assert messages == [
        "exporters::clickhouse::endpoint: environment variable DSN is not set; set it, or give a default "
        "with ${env:DSN:-value}",
        "exporters::clickhouse::password: environment variable PW is not set; set it, or give a default "
        "with ${env:PW:-value}",
    ]


def test_malformed_reference_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        expand_env({"x": "${env:}"}, ENV)
    assert "is not a valid reference" in str(info.value.problems[0])
    assert info.value.problems[0].path == "x"


def test_merge_is_deep_and_later_wins() -> None:
    base = {"exporters": {"clickhouse": {"endpoint": "a", "table": "t"}}, "service": {"extensions": ["x"]}}
    override = {"exporters": {"clickhouse": {"endpoint": "b"}}, "service": {"extensions": ["y", "z"]}}
    assert merge(base, override) == {
        "exporters": {"clickhouse": {"endpoint": "b", "table": "t"}},
        "service": {"extensions": ["y", "z"]},  # lists are replaced, not concatenated
    }


def test_load_files_merges_in_order(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    second = tmp_path / "b.yaml"
    first.write_text("receivers:\n  otlp: {}\nservice:\n  telemetry: {logs: {level: info}}\n")
    second.write_text("service:\n  telemetry: {logs: {level: debug}}\n")
    assert load_files([first, second]) == {
        "receivers": {"otlp": {}},
        "service": {"telemetry": {"logs": {"level": "debug"}}},
    }


def test_load_files_reports_every_unreadable_or_invalid_file(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("receivers: [unclosed\n")
    not_map = tmp_path / "list.yaml"
    not_map.write_text("- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_files([tmp_path / "missing.yaml", bad_yaml, not_map])
    text = [p.message for p in info.value.problems]
    assert len(text) == 3
    assert text[0].startswith(f"cannot read config file '{tmp_path / 'missing.yaml'}'")
    assert "is not valid YAML" in text[1]
    assert text[2] == f"config file '{not_map}' must hold a mapping at the top, got list"
