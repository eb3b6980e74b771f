"""What the fuzz tests share: their bound, and structure mutations of parsed documents.

Bounded for CI; ``KUBENETMON_FUZZ_EXAMPLES=N`` runs N examples per test, with
fresh randomness (CI's runs are derandomized, so they repeat).
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings


def fuzz_settings(default_examples: int, *extra_checks: HealthCheck) -> Any:
    """Hypothesis settings: ``default_examples`` (or ``$KUBENETMON_FUZZ_EXAMPLES``), no deadline."""
    examples = int(os.environ.get("KUBENETMON_FUZZ_EXAMPLES", str(default_examples)))
    return settings(
        max_examples=examples, deadline=None, derandomize="KUBENETMON_FUZZ_EXAMPLES" not in os.environ,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, *extra_checks],
    )


def paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a document of dicts and lists, the root (``()``) included."""
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += paths(value, (*prefix, i))
    return out


def mutate(data: Any, path: tuple[Any, ...], how: str, value: Any, key: str | None = None) -> Any:
    """A copy of ``data`` with one change at ``path``.

    ``how``: ``replace`` (by ``value``), ``drop``, ``rename`` (a dict key to ``key``, or ``<key>_``),
    ``add`` (``key: value`` beside the path's last key), ``empty`` (a list or dict), ``duplicate``
    (a list's items twice).
    """
    if not path:
        if how == "empty" and isinstance(data, list | dict):
            return type(data)()
        if how == "duplicate" and isinstance(data, list):
            return data + data
        return value if how == "replace" else data
    head, rest = path[0], path[1:]
    if isinstance(data, dict):
        copy: Any = dict(data)
        if not rest and how == "drop":
            copy.pop(head, None)
        elif not rest and how == "rename":
            copy[key if key is not None else f"{head}_"] = copy.pop(head)
        elif not rest and how == "add" and key is not None:
            copy[key] = value
        else:
            copy[head] = mutate(data[head], rest, how, value, key)
        return copy
    copy = list(data)
    if not rest and how == "drop":
        del copy[head]
    else:
        copy[head] = mutate(data[head], rest, how, value, key)
    return copy
