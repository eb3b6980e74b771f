"""Parsing YAML that a person or a careless tool wrote, with bounds on what it may cost.

PyYAML's ``safe_load`` is safe from code execution, not from cost: aliases are
shared references, so a 444-byte file of nested anchors ("billion laughs")
parses instantly and then takes minutes and gigabytes in whatever walks the
result (env substitution, validation); a recursive alias (``&x [*x]``) or
~3,000 nested brackets end in ``RecursionError``; an integer of more than
4,300 digits in ``ValueError``; bytes that are not UTF-8 in
``UnicodeDecodeError``. Here each of those becomes an :class:`UnsafeYAMLError`
whose message says what is wrong and what to do, before anything walks the data.

The bounds are far above any real config (the shipped ones nest 7 levels and
hold a few hundred values) and far below what hurts.
"""

from __future__ import annotations

import codecs
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["MAX_DEPTH", "MAX_INT_CHARS", "MAX_VALUES", "UnsafeYAMLError", "load_yaml"]

MAX_DEPTH = 64  # nesting levels of maps and lists
MAX_VALUES = 200_000  # scalars, maps and lists, counting every alias at its full expanded size
MAX_INT_CHARS = 40  # digits of one integer (2**128 has 39)

_UTF16_32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class UnsafeYAMLError(ValueError):
    """The text is not YAML we accept; the message says why and what to do."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting while composing (before recursion runs out)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise UnsafeYAMLError(
                    f"nests deeper than {MAX_DEPTH} levels (line {mark.line + 1}); a kubenetmon config needs "
                    "fewer than 10: look for unbalanced brackets or generated nesting"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_bounded_int(loader: yaml.SafeLoader, node: ScalarNode) -> Any:
    text = str(loader.construct_scalar(node))
    digits = len(text.replace("_", "").lstrip("+-"))
    if digits > MAX_INT_CHARS:
        raise ConstructorError(
            None, None,
            f"an integer of {digits} digits is larger than any setting takes (at most {MAX_INT_CHARS}); "
            "quote it if it is meant as text",
            node.start_mark,
        )
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except (ValueError, IndexError):  # PyYAML indexes an empty `!!int` and int()s whatever else was tagged
        raise ConstructorError(
            None, None, f"{text[:40]!r} is not an integer; drop the !!int tag or fix the number", node.start_mark
        ) from None


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _construct_bounded_int)


def _expanded_size(root: Node) -> int:
    """Values in the document with every alias expanded; raises on cycles and past MAX_VALUES.

    Memoised per node, so the work is linear in the size of the text even
    when the expansion is exponential. Depth is bounded by the composer, so
    plain recursion is safe here.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        known = sizes.get(key)
        if known is not None:
            return known
        if key in active:
            raise UnsafeYAMLError(
                f"holds a recursive alias (line {node.start_mark.line + 1}: an alias inside the anchor it "
                "refers to); an alias may only repeat a finished value"
            )
        active.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if total > MAX_VALUES:
            raise UnsafeYAMLError(
                f"expands to more than {MAX_VALUES:,} values (line {node.start_mark.line + 1}); YAML "
                "aliases (*name) multiply what their anchors (&name) hold: write the repeated part out, "
                "or use fewer nested aliases"
            )
        sizes[key] = total
        return total

    return size(root)


def _decode(body: bytes) -> str:
    if body.startswith(_UTF16_32_BOMS):
        encoding = "UTF-32" if body.startswith(_UTF16_32_BOMS[:2]) else "UTF-16"
        raise UnsafeYAMLError(f"is {encoding} text; save it as UTF-8 (e.g. `iconv -f {encoding} -t UTF-8`)")
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        raise UnsafeYAMLError(
            f"is not UTF-8 text (byte 0x{body[exc.start]:02x} at offset {exc.start}, line {line}); "
            "save it as UTF-8"
        ) from None


def load_yaml(body: bytes) -> Any:
    """Parse one YAML document from ``body`` within the bounds above.

    Raises :class:`UnsafeYAMLError` (bounds, encoding) or :class:`yaml.YAMLError`
    (syntax); nothing else, whatever the bytes.
    """
    loader = _BoundedLoader(_decode(body))
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:  # unreachable with MAX_DEPTH far below the recursion limit; kept as a net
            raise UnsafeYAMLError(f"nests deeper than {MAX_DEPTH} levels") from None
        if node is None:
            return None
        _expanded_size(node)
        try:
            return loader.construct_document(node)
        except (ValueError, OverflowError, LookupError, AttributeError, TypeError) as exc:
            # PyYAML's scalar constructors trust the tag: an impossible date (2001-02-30), or an explicit
            # tag on text that is not of that type (`!!float`, `!!bool x`, `!!timestamp x`), ends in
            # whatever the conversion raises.
            raise UnsafeYAMLError(
                f"holds a value that cannot be represented ({type(exc).__name__}: {exc}); quote it if it is "
                "text, or drop its !!tag"
            ) from None
    finally:
        loader.dispose()
