"""Validating a whole config against the known components, reporting every problem at once."""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from kubenetmon.component import ComponentConfig, ComponentID, Kind
from kubenetmon.config.errors import describe_value, problems_from_validation_error
from kubenetmon.config.model import ServiceConfig
from kubenetmon.errors import ConfigError, ConfigProblem
from kubenetmon.plugins import ComponentRegistry

__all__ = ["Config", "non_finite_numbers", "validate"]

log = logging.getLogger(__name__)

_SECTIONS = ("receivers", "processors", "exporters", "extensions", "service")
_PIPELINE_REFS: tuple[tuple[str, Kind], ...] = (
    ("receivers", Kind.RECEIVER),
    ("processors", Kind.PROCESSOR),
    ("exporters", Kind.EXPORTER),
)


@dataclass(frozen=True)
class Config:
    """A validated configuration: typed component configs and the service section."""

    components: dict[Kind, dict[ComponentID, ComponentConfig]]
    service: ServiceConfig
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def component(self, kind: Kind, id_: ComponentID) -> ComponentConfig:
        return self.components[kind][id_]


def validate(raw: dict[str, Any], registry: ComponentRegistry) -> Config:
    """Validate ``raw`` (already env-expanded); raise :class:`ConfigError` with all problems."""
    problems: list[ConfigProblem] = []
    for key in raw:
        if key not in _SECTIONS:
            problems.append(ConfigProblem(str(key), f"unknown section; known sections: {', '.join(_SECTIONS)}"))

    components: dict[Kind, dict[ComponentID, ComponentConfig]] = {}
    declared: dict[Kind, set[ComponentID]] = {}
    for kind in Kind:
        declared[kind] = set()
        components[kind] = _validate_section(kind, raw.get(kind.section), registry, problems, declared[kind])

    service = _validate_service(raw.get("service"), problems)
    if service is not None:
        _check_references(service, declared, problems)
        problems.extend(non_finite_numbers(service, "service"))
    for kind, configured in components.items():
        for id_, component in configured.items():
            problems.extend(non_finite_numbers(component, f"{kind.section}::{id_}"))
    if problems:
        raise ConfigError(problems)
    assert service is not None
    for kind, configured in components.items():
        used = _used_ids(service, kind)
        for id_ in configured:
            if id_ not in used:
                log.warning("%s %s is configured but not used by any pipeline", kind.value, id_)
    return Config(components, service, raw)


def non_finite_numbers(value: Any, path: str) -> list[ConfigProblem]:
    """A problem for every infinite or NaN number in a validated config, with its path.

    ``.inf`` (or the string ``inf`` from an environment variable) passes a
    ``gt=0`` bound and then fails far from the config: a thread join or a
    socket timeout of infinity raises ``OverflowError`` at shutdown. Checked
    here once for every model instead of in each of them.
    """
    if isinstance(value, float):
        if math.isfinite(value):
            return []
        return [ConfigProblem(path, f"must be a finite number, got {value!r}")]
    if isinstance(value, BaseModel):
        return [p for name in type(value).model_fields
                for p in non_finite_numbers(getattr(value, name), f"{path}::{name}")]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in non_finite_numbers(item, f"{path}::{key}")]
    if isinstance(value, list | tuple | set | frozenset):
        return [p for i, item in enumerate(value) for p in non_finite_numbers(item, f"{path}::{i}")]
    return []


def _validate_section(
    kind: Kind,
    section: Any,
    registry: ComponentRegistry,
    problems: list[ConfigProblem],
    declared: set[ComponentID],
) -> dict[ComponentID, ComponentConfig]:
    result: dict[ComponentID, ComponentConfig] = {}
    if section is None:
        return result
    if not isinstance(section, dict):
        problems.append(
            ConfigProblem(kind.section, f"must be a mapping of ids to configs, got {describe_value(section)}")
        )
        return result
    for key, body in section.items():
        path = f"{kind.section}::{key}"
        try:
            id_ = ComponentID.parse(str(key))
        except ValueError as exc:
            problems.append(ConfigProblem(path, str(exc)))
            continue
        # Declared even if its body is invalid, so pipelines referring to it
        # do not get a second, misleading "not configured" error.
        declared.add(id_)
        entry = registry.get(kind, id_.type)
        if entry is None:
            known = ", ".join(registry.types(kind)) or "none"
            problems.append(
                ConfigProblem(
                    path,
                    f"unknown {kind.value} type {id_.type!r}; known {kind.section}: {known} "
                    "(a plugin providing it may not be installed)",
                )
            )
            continue
        model: type[ComponentConfig] = entry.factory.config_model
        settings = {} if body is None else body
        if not isinstance(settings, dict):
            problems.append(ConfigProblem(path, f"must be a mapping, got {describe_value(settings)}"))
            continue
        try:
            result[id_] = model.model_validate(settings)
        except ValidationError as exc:
            problems.extend(problems_from_validation_error(exc, path, model))
    return result


def _validate_service(section: Any, problems: list[ConfigProblem]) -> ServiceConfig | None:
    if section is None:
        problems.append(ConfigProblem("service", "required: it lists the pipelines to run"))
        return None
    if not isinstance(section, dict):
        problems.append(ConfigProblem("service", f"must be a mapping, got {describe_value(section)}"))
        return None
    try:
        return ServiceConfig.model_validate(section)
    except ValidationError as exc:
        problems.extend(problems_from_validation_error(exc, "service", ServiceConfig))
        return None


def _used_ids(service: ServiceConfig, kind: Kind) -> set[ComponentID]:
    if kind is Kind.EXTENSION:
        return {ComponentID.parse(e) for e in service.extensions}
    used: set[ComponentID] = set()
    for pipeline in service.pipelines.values():
        for ref in getattr(pipeline, kind.section):
            with contextlib.suppress(ValueError):  # reported by _check_references
                used.add(ComponentID.parse(ref))
    return used


def _check_references(
    service: ServiceConfig,
    components: dict[Kind, set[ComponentID]],
    problems: list[ConfigProblem],
) -> None:
    if not service.pipelines:
        problems.append(ConfigProblem("service::pipelines", "at least one pipeline is required"))
    for name, pipeline in service.pipelines.items():
        path = f"service::pipelines::{name}"
        try:
            ComponentID.parse(name)
        except ValueError as exc:
            problems.append(ConfigProblem(path, str(exc)))
        for field_name, kind in _PIPELINE_REFS:
            refs = getattr(pipeline, field_name)
            if field_name != "processors" and not refs:
                problems.append(ConfigProblem(path, f"must have at least one {kind.value}"))
            seen: set[str] = set()
            for ref in refs:
                if ref in seen:
                    problems.append(ConfigProblem(path, f"lists {kind.value} {ref!r} twice"))
                seen.add(ref)
                _check_ref(path, kind, ref, components, problems)
    for ref in service.extensions:
        _check_ref("service::extensions", Kind.EXTENSION, ref, components, problems)


def _check_ref(
    path: str,
    kind: Kind,
    ref: str,
    components: dict[Kind, set[ComponentID]],
    problems: list[ConfigProblem],
) -> None:
    try:
        id_ = ComponentID.parse(ref)
    except ValueError as exc:
        problems.append(ConfigProblem(path, str(exc)))
        return
    if id_ not in components[kind]:
        known = ", ".join(sorted(str(i) for i in components[kind])) or "none"
        problems.append(
            ConfigProblem(path, f"references {kind.value} {ref!r} which is not configured; known: {known}")
        )
