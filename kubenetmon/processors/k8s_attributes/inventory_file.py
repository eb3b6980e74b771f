"""An inventory file's text → Python data, at the memory and CPU cost of the data itself.

``yaml.safe_load`` first builds a node for every value, then the objects: for
an inventory of 50,000 pods (6 MB of YAML) it took 23 s of CPU and 591 MB of
peak memory over the result, the C loader 8 s and 404 MB, which alone broke
the gateway's memory bound. Here:

* JSON (``kubectl get … -o json``, or any file that parses as JSON) goes
  through :func:`json.loads` (0.1 s for the same inventory);
* YAML is read as a stream of parser events (libyaml's when PyYAML has it)
  and the objects are built from them directly, with the safe loader's
  scalar rules (its resolver and constructors: ``yes`` is true, ``0x1f`` an
  int, quoted text a string), anchors and aliases, and merge keys; no node
  tree is kept. Nesting is bounded by :data:`MAX_DEPTH`, without recursion.

With ``convert``, each item of a list under a top-level key (``pods:``,
``nodes:``…) is handed over as soon as it is complete and only what
``convert`` returns is kept in the list: the whole document never exists at
once. It matters beyond the peak: objects kept from a document parsed whole
sit among the freed ones (pymalloc frees an arena only when all of it is
free): loading a 50k-pod inventory left 66 MB of RSS for 30 MB of kept
objects, 36 MB when its items are converted as they come.

Errors are ``yaml.YAMLError`` (with the position), as from ``safe_load``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

__all__ = ["MAX_DEPTH", "Convert", "load_text"]

#: ``convert(key, position, item)``: what to keep for the item at ``position`` of the list under
#: top-level ``key``.
Convert = Callable[[Any, int, Any], Any]

MAX_DEPTH = 64  # an inventory nests ~6 levels (a pod's metadata.ownerReferences[].name)

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_MAP_TAGS = (None, "!", "tag:yaml.org,2002:map")
_SEQ_TAGS = (None, "!", "tag:yaml.org,2002:seq")


def _error(message: str, event: Any) -> ConstructorError:
    return ConstructorError(None, None, message, event.start_mark)


def load_text(text: str, convert: Convert | None = None) -> Any:
    """The document in ``text`` (None when it holds none); JSON or YAML.

    ``convert``: called for each item of a list under a top-level key (of a
    mapping), in order; the list keeps what it returns. JSON is parsed whole
    first (the stdlib parser has no events), then its items converted.
    """
    if text.lstrip()[:1] in ("{", "["):
        try:
            doc = json.loads(text)
        except ValueError:
            pass  # YAML flow style, or not valid at all: the YAML parser says which
        else:
            if convert is not None and isinstance(doc, dict):
                for key, value in doc.items():
                    if isinstance(value, list):
                        for i, item in enumerate(value):
                            value[i] = None  # each item freed once converted
                            value[i] = convert(key, i, item)
            return doc
    return _load_yaml(text, convert)


class _Builder:
    """Objects from events: one open container per nesting level."""

    def __init__(self, convert: Convert | None = None) -> None:
        self.convert = convert
        self.resolver = Resolver()
        self.constructor = SafeConstructor()
        self.anchors: dict[str, Any] = {}
        # Per open container: (the object, the key waiting for its value or _NoKey, merge sources).
        self.stack: list[tuple[Any, list[Any], list[dict[Any, Any]]]] = []
        self.root: Any = None

    def scalar(self, event: Any) -> Any:
        tag = event.tag
        value = event.value
        plain, quoted = event.implicit
        if tag is None or tag == "!":
            if not plain:  # quoted, or a block scalar: text
                return value
            tag = self.resolver.resolve(ScalarNode, value, (plain, quoted))  # type: ignore[no-untyped-call]
        if tag == _STR:
            return value
        if tag == _MERGE:
            return _MergeKey
        construct = self.constructor.yaml_constructors.get(tag)
        if construct is None:
            raise _error(f"could not determine a constructor for the tag {tag!r}", event)
        return construct(self.constructor, ScalarNode(tag, value, event.start_mark, event.end_mark, event.style))

    def add(self, value: Any, anchor: str | None, event: Any) -> None:
        """Put ``value`` where the open container expects it (``event``: for the position in errors)."""
        if anchor is not None:
            self.anchors[anchor] = value
        if not self.stack:
            self.root = value
            return
        container, key, merges = self.stack[-1]
        if isinstance(container, list):
            if self.convert is not None and len(self.stack) == 2 and isinstance(self.stack[0][0], dict):
                value = self.convert(self.stack[0][1][0], len(container), value)  # the key awaiting this list
            container.append(value)
        elif key[0] is _NoKey:
            key[0] = value
        else:
            k = key[0]
            key[0] = _NoKey
            if k is _MergeKey:
                sources = value if isinstance(value, list) else [value]
                if not all(isinstance(s, dict) for s in sources):
                    raise _error("a merge key (<<) takes a mapping or a list of mappings", event)
                merges.extend(sources)
                return
            try:
                container[k] = value
            except TypeError:
                raise _error(f"a mapping key must be a scalar, got {type(k).__name__}", event) from None

    def open(self, container: Any, event: Any) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise _error(f"nests deeper than {MAX_DEPTH} levels: not an inventory", event)
        if event.anchor is not None:
            self.anchors[event.anchor] = container
        self.stack.append((container, [_NoKey], []))

    def close(self, event: Any) -> None:
        container, _key, merges = self.stack.pop()
        for source in merges:  # keys of the mapping itself win, then the first source listed
            for k, v in source.items():
                container.setdefault(k, v)
        self.add(container, None, event)  # its anchor was recorded when it opened


class _NoKey:
    """Marks a mapping that waits for a key."""


class _MergeKey:
    """The ``<<`` key."""


def _load_yaml(text: str, convert: Convert | None = None) -> Any:
    builder = _Builder(convert)
    documents = 0
    event: Any
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, ScalarEvent):
            builder.add(builder.scalar(event), event.anchor, event)
        elif isinstance(event, MappingStartEvent):
            if event.tag not in _MAP_TAGS:
                raise _error(f"unknown tag {event.tag!r} on a mapping", event)
            builder.open({}, event)
        elif isinstance(event, SequenceStartEvent):
            if event.tag not in _SEQ_TAGS:
                raise _error(f"unknown tag {event.tag!r} on a sequence", event)
            builder.open([], event)
        elif isinstance(event, MappingEndEvent | SequenceEndEvent):
            builder.close(event)
        elif isinstance(event, AliasEvent):
            if event.anchor not in builder.anchors:
                raise _error(f"found undefined alias {event.anchor!r}", event)
            builder.add(builder.anchors[event.anchor], None, event)
        elif type(event).__name__ == "DocumentStartEvent":
            documents += 1
            if documents > 1:
                raise yaml.composer.ComposerError(
                    "expected a single document in the stream", None, "but found another document",
                    event.start_mark,
                )
    return builder.root
