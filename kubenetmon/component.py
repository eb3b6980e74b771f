"""Component contracts: what receivers, processors, exporters and extensions are.

Lifecycle contract (every component, built-in or third-party)
-------------------------------------------------------------
* A component is created by its factory from a validated config; creating it
  does no I/O that can block for long and starts no threads.
* ``start(host)`` returns quickly. Background work (polling, serving,
  sending) runs in threads or tasks the component owns. An exception from
  ``start`` aborts the service with ``failed to start <kind> "<id>": <error>``.
* ``shutdown(timeout)`` stops intake, then drains and flushes what it holds
  within ``timeout`` seconds. It is idempotent and safe to call without
  ``start``.
* The service starts extensions, then exporters, then processors, then
  receivers, so that nothing produces data before its consumers run; it
  shuts them down in the reverse order, so that each stage drains into a
  stage that is still running.
* ``is_ready()`` is True once the component can do its job (e.g. caches
  synced); ``health()`` returns None when healthy or a reason when a worker
  died. Both are polled by the ``health_check`` extension.
* ``consume(batch)`` may be called from several threads at once. It either
  takes the batch (and from then on owns it) or raises
  :class:`~kubenetmon.errors.BackpressureError` when it cannot take it now;
  the caller keeps the batch and retries later. Exporters must not change
  the batches they consume (one batch object may go to several exporters);
  processors may change theirs (each pipeline gets its own copy).
"""

from __future__ import annotations

import builtins
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict

from kubenetmon.flows import FlowBatch

if TYPE_CHECKING:
    from kubenetmon.identity import Identity
    from kubenetmon.telemetry.metrics import ComponentMetrics

__all__ = [
    "BaseComponent",
    "Component",
    "ComponentConfig",
    "ComponentID",
    "Consumer",
    "CreateSettings",
    "Exporter",
    "ExporterFactory",
    "Extension",
    "ExtensionFactory",
    "Factory",
    "Host",
    "Kind",
    "Processor",
    "ProcessorFactory",
    "Receiver",
    "ReceiverFactory",
    "Stability",
]

_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class Kind(StrEnum):
    RECEIVER = "receiver"
    PROCESSOR = "processor"
    EXPORTER = "exporter"
    EXTENSION = "extension"

    @property
    def section(self) -> str:
        """The top-level config key holding components of this kind."""
        return self.value + "s"


class Stability(StrEnum):
    DEVELOPMENT = "development"
    ALPHA = "alpha"
    BETA = "beta"
    STABLE = "stable"


@dataclass(frozen=True, order=True)
class ComponentID:
    """``type[/name]``, e.g. ``clickhouse/primary``."""

    type: str
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> ComponentID:
        type_, sep, name = text.partition("/")
        if not _TYPE_RE.match(type_):
            raise ValueError(
                f"{text!r} is not a valid component id: the type must be lower_snake_case "
                "(letters, digits, '_'), optionally followed by '/name'"
            )
        if sep and not _NAME_RE.match(name):
            raise ValueError(
                f"{text!r} is not a valid component id: the name after '/' must be non-empty "
                "and use only letters, digits, '_', '-' or '.'"
            )
        return cls(type_, name)

    def __str__(self) -> str:
        return f"{self.type}/{self.name}" if self.name else self.type


class ComponentConfig(BaseModel):
    """Base of every component's config model: typed, defaulted, strict about keys.

    Give every field a ``description`` (``Field(..., description=...)``): the
    ``components`` command and the component READMEs show it.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


@runtime_checkable
class Consumer(Protocol):
    """Takes flow batches. See the module docstring for the contract."""

    def consume(self, batch: FlowBatch) -> None: ...


class Host(Protocol):
    """What a running service offers its components at ``start``."""

    def get_extension(self, id: ComponentID) -> Extension | None: ...

    def components(self) -> Mapping[str, Component]: ...


@runtime_checkable
class Component(Protocol):
    def start(self, host: Host) -> None: ...

    def shutdown(self, timeout: float = 30.0) -> None: ...

    def is_ready(self) -> bool: ...

    def health(self) -> str | None: ...


class Receiver(Component, Protocol):
    """Produces batches into the consumer it was created with."""


class Processor(Component, Consumer, Protocol):
    """Consumes batches, changes them, and passes them to the next consumer."""


class Exporter(Component, Consumer, Protocol):
    """Consumes batches and sends them out of the process."""


class Extension(Component, Protocol):
    """Not in the data path: health endpoints, auth, storage…"""


class BaseComponent:
    """Convenience base: no-op lifecycle and always ready/healthy.

    Subclasses override what they need; calling ``super()`` is not required.
    """

    def start(self, host: Host) -> None:
        return None

    def shutdown(self, timeout: float = 30.0) -> None:
        return None

    def is_ready(self) -> bool:
        return True

    def health(self) -> str | None:
        return None


@dataclass(frozen=True)
class CreateSettings:
    """Everything a factory needs besides its config."""

    id: ComponentID
    kind: Kind
    identity: Identity
    metrics: ComponentMetrics
    logger: logging.Logger
    extra: Mapping[str, Any] = field(default_factory=dict)


C = TypeVar("C", bound=ComponentConfig)


@dataclass(frozen=True)
class Factory(Generic[C]):
    """Common part of all factories; see the kind-specific subclasses."""

    type: str
    config_model: builtins.type[C]
    description: str
    stability: Stability = Stability.ALPHA

    kind: Kind = field(init=False, default=Kind.RECEIVER)

    def __post_init__(self) -> None:
        if not _TYPE_RE.match(self.type):
            raise ValueError(f"component type {self.type!r} must be lower_snake_case")

    def default_config(self) -> C:
        return self.config_model()


@dataclass(frozen=True)
class ReceiverFactory(Factory[C]):
    create: Callable[[CreateSettings, C, Consumer], Receiver] = field(kw_only=True)
    kind: Kind = field(init=False, default=Kind.RECEIVER)


@dataclass(frozen=True)
class ProcessorFactory(Factory[C]):
    create: Callable[[CreateSettings, C, Consumer], Processor] = field(kw_only=True)
    kind: Kind = field(init=False, default=Kind.PROCESSOR)


@dataclass(frozen=True)
class ExporterFactory(Factory[C]):
    create: Callable[[CreateSettings, C], Exporter] = field(kw_only=True)
    kind: Kind = field(init=False, default=Kind.EXPORTER)


@dataclass(frozen=True)
class ExtensionFactory(Factory[C]):
    create: Callable[[CreateSettings, C], Extension] = field(kw_only=True)
    kind: Kind = field(init=False, default=Kind.EXTENSION)
