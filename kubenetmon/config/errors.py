"""Turning pydantic's errors into one-line messages with YAML paths."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from kubenetmon.errors import ConfigProblem

__all__ = ["describe_value", "problems_from_validation_error"]


def describe_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _message(error: dict[str, Any], model: type[BaseModel] | None) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        known = ""
        if model is not None and len(error["loc"]) == 1:
            known = "; known keys: " + ", ".join(sorted(model.model_fields))
        return f"unknown key{known}"
    if kind == "missing":
        return "required, but not set"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        options = [o.strip().strip("'") for o in expected.replace(" or ", ", ").split(", ")]
        return f"{describe_value(value)} is not one of {', '.join(o or repr('') for o in options)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()), "")
        return f"must be {op} {bound}, got {describe_value(value)}"
    if kind == "value_error":
        return f"{ctx.get('error', error['msg'])}, got {describe_value(value)}"
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {describe_value(value)}"


def problems_from_validation_error(
    exc: ValidationError, path: str, model: type[BaseModel] | None = None
) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors():
        loc = "::".join(str(p) for p in error["loc"])
        full = f"{path}::{loc}" if path and loc else (path or loc)
        problems.append(ConfigProblem(full, _message(dict(error), model)))
    return problems
