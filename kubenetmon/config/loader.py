"""Reading config files: YAML, environment substitution, deep merge."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from kubenetmon.config.safe_yaml import UnsafeYAMLError, load_yaml
from kubenetmon.errors import ConfigError, ConfigProblem

__all__ = ["expand_env", "load_files", "merge"]

# ``$$`` (a literal dollar), ``${env:NAME}``, ``${NAME}``, each optionally ``:-default``.
_REF = re.compile(r"\$\$|\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_BAD_REF = re.compile(r"\$\{[^}]*\}?")

# Configs are a few KiB; a file this large is the wrong file, and reading it whole would cost memory.
MAX_CONFIG_BYTES = 16 << 20


def _expand_string(value: str, path: str, env: Mapping[str, str], problems: list[ConfigProblem]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(
            ConfigProblem(
                path,
                f"environment variable {name} is not set; set it, or give a default with "
                f"${{env:{name}:-value}}",
            )
        )
        return ""

    expanded = _REF.sub(replace, value)
    # What is left of ``${`` after expansion was not a valid reference.
    leftover = _BAD_REF.search(_REF.sub("", value))
    if leftover:
        problems.append(
            ConfigProblem(
                path,
                f"{leftover.group(0)!r} is not a valid reference; use ${{env:NAME}}, "
                "${NAME} or ${env:NAME:-default}, and $$ for a literal $",
            )
        )
    return expanded


def expand_env(data: Any, env: Mapping[str, str] | None = None, path: str = "") -> Any:
    """Substitute environment references in every string scalar of ``data``.

    Raises :class:`ConfigError` listing every unset variable and bad reference.
    """
    problems: list[ConfigProblem] = []
    result = _expand(data, os.environ if env is None else env, path, problems)
    if problems:
        raise ConfigError(problems)
    return result


def _expand(data: Any, env: Mapping[str, str], path: str, problems: list[ConfigProblem]) -> Any:
    if isinstance(data, str):
        return _expand_string(data, path, env, problems)
    if isinstance(data, dict):
        return {k: _expand(v, env, _join(path, k), problems) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand(v, env, _join(path, str(i)), problems) for i, v in enumerate(data)]
    return data


def _join(path: str, key: object) -> str:
    return f"{path}::{key}" if path else str(key)


def merge(base: Any, override: Any) -> Any:
    """Deep-merge two parsed configs: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


def load_files(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Parse and merge YAML files in order (later files win); no substitution yet."""
    merged: dict[str, Any] = {}
    problems: list[ConfigProblem] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                body = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            problems.append(ConfigProblem("", f"cannot read config file {str(path)!r}: {exc.strerror}"))
            continue
        if len(body) > MAX_CONFIG_BYTES:
            problems.append(ConfigProblem(
                "", f"config file {str(path)!r} is larger than {MAX_CONFIG_BYTES >> 20} MiB; is it the right file?"
            ))
            continue
        try:
            data = load_yaml(body)
        except UnsafeYAMLError as exc:
            problems.append(ConfigProblem("", f"config file {str(path)!r} {exc}"))
            continue
        except yaml.YAMLError as exc:
            problems.append(ConfigProblem("", f"config file {str(path)!r} is not valid YAML: {exc}"))
            continue
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.append(
                ConfigProblem("", f"config file {str(path)!r} must hold a mapping at the top, "
                              f"got {type(data).__name__}")
            )
            continue
        merged = merge(merged, data)
    if problems:
        raise ConfigError(problems)
    return merged
