"""The inventory file loader reads what ``yaml.safe_load`` reads, the same way, without its node tree."""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml

from kubenetmon.processors.k8s_attributes.inventory_file import MAX_DEPTH, load_text

CASES = [
    "a: 1\nb: [1, 2.5, yes, no, on, off, ~, null, 0x1f, 0o17, 1_000, '01', \"x\", 2001-12-14, .inf, -.nan_]\n",
    "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\nlist: [*b, *b]\n",
    "merge:\n  <<: [{a: 1}, {a: 2, b: 2}]\n  c: 3\n",
    "- a\n- - b\n  - c\n- {k: |\n    block\n    text\n  , f: >\n    folded\n    text\n  }\n",
    "x: !!str 123\ny: !!int '7'\nz: !!float 1\nw: !!binary aGVsbG8=\nv: !!null ''\n",
    '{"json": [1, 2, {"a": null, "b": true}], "s": "t"}',
    "{flow: style, not: json}",
    "",
    "# only a comment\n",
    "---\npods: []\n...\n",
    "key with spaces: value: with colon\n1: int key\ntrue: bool key\n",
    "pods:\n- name: api-0\n  ips: [10.0.0.1, 'fd00::1']\n  labels: {app: api, 'app.kubernetes.io/name': api}\n",
]


def _same(text: str) -> tuple[Any, Any]:
    try:
        want: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        want = ("error", type(exc).__name__)
    try:
        got: Any = load_text(text)
    except yaml.YAMLError as exc:
        got = ("error", type(exc).__name__)
    return want, got


@pytest.mark.parametrize("text", CASES)
def test_reads_like_safe_load(text: str) -> None:
    want, got = _same(text)
    assert got == want


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.randrange(-10**12, 10**12)
    if kind == 1:
        return rng.choice(["yes", "no", "null", "~", "0x10", "1e3", "01:30", "", " x ", "a: b", "- c", "'q'", "#"])
    if kind == 2:
        return rng.random() * 1e6
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return "".join(rng.choice("abc-_./:é 0123") for _ in range(rng.randrange(12)))
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(_random_value(rng, 4)): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


@pytest.mark.parametrize("style", [False, True, None])
def test_random_documents_in_every_dump_style_read_alike(style: bool | None) -> None:
    rng = random.Random(7)
    for _ in range(300):
        doc = {"pods": [_random_value(rng) for _ in range(3)]}
        text = yaml.safe_dump(doc, default_flow_style=style, allow_unicode=True)
        want, got = _same(text)
        assert got == want == doc, text


@pytest.mark.parametrize(("text", "what"), [
    ("a: *nowhere\n", "undefined alias"),
    ("a: !custom 1\n", "could not determine a constructor"),
    ("a: !custom {b: 1}\n", "unknown tag"),
    ("a: 1\n---\nb: 2\n", "single document"),
    ("a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH, f"deeper than {MAX_DEPTH}"),
    ("a: [1, 2\n", "expected"),
    ("<<: [1]\n", "merge key"),
])
def test_bad_text_is_a_yaml_error_that_says_what(text: str, what: str) -> None:
    with pytest.raises(yaml.YAMLError, match=what):
        load_text(text)


@pytest.mark.parametrize("text", [
    "pods:\n- {name: a}\n- {name: b, ips: [10.0.0.1]}\nnodes:\n- {name: n}\nother: {pods: [1, 2]}\n",
    '{"pods": [{"name": "a"}, {"name": "b", "ips": ["10.0.0.1"]}], "nodes": [{"name": "n"}], '
    '"other": {"pods": [1, 2]}}',
])
def test_convert_gets_each_top_level_list_item_in_order_and_the_list_keeps_its_result(text: str) -> None:
    seen: list[tuple[Any, int, Any]] = []

    def convert(key: Any, position: int, item: Any) -> Any:
        seen.append((key, position, item))
        return f"{key}#{position}"

    doc = load_text(text, convert)
    # Only lists directly under a top-level key: the nested "other.pods" list is left as it is.
    assert seen == [("pods", 0, {"name": "a"}), ("pods", 1, {"name": "b", "ips": ["10.0.0.1"]}),
                    ("nodes", 0, {"name": "n"})]
    assert doc == {"pods": ["pods#0", "pods#1"], "nodes": ["nodes#0"], "other": {"pods": [1, 2]}}


def test_convert_has_each_yaml_item_before_the_rest_of_the_file_is_read() -> None:
    # Items are handed over as they complete, so that the whole document never exists at once; an error
    # further on comes after the items before it.
    seen: list[Any] = []
    with pytest.raises(yaml.YAMLError):
        load_text("pods:\n- {name: a}\n- {name: b}\n- {name: [unclosed\n", lambda k, i, item: seen.append(item))
    assert seen == [{"name": "a"}, {"name": "b"}]
