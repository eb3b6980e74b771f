"""Errors shared across components.

Exporters raise :class:`RetryableError` or :class:`PermanentError` from their
push; the exporter helper retries the first and drops (and counts) the second.
Consumers raise :class:`BackpressureError` when they cannot take a batch now.
"""

from __future__ import annotations

__all__ = [
    "BackpressureError",
    "ComponentStartError",
    "ConfigError",
    "ConfigProblem",
    "KubenetmonError",
    "MixedBatchError",
    "PermanentError",
    "PluginError",
    "RetryableError",
]

from dataclasses import dataclass


class KubenetmonError(Exception):
    """Base of the errors this package raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One validation failure, located by its YAML path (``a::b::c``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(KubenetmonError):
    """The configuration is invalid; ``problems`` lists every failure found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__(
            "invalid configuration:\n" + "\n".join(f"  {p}" for p in problems)
        )


class PluginError(KubenetmonError):
    """A plugin is broken or conflicts with another (e.g. duplicate component types)."""


class ComponentStartError(KubenetmonError):
    """A component failed to start; the message names it."""


class RetryableError(KubenetmonError):
    """A send failed in a way that may succeed later.

    ``retry_after`` (seconds) overrides the backoff when the peer said when
    to come back (OTLP ``RetryInfo``, HTTP ``Retry-After``).
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(KubenetmonError):
    """A send failed in a way that retrying cannot fix (bad data, rejected schema)."""


class BackpressureError(KubenetmonError):
    """The consumer cannot take the batch now; the caller keeps it and tries later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MixedBatchError(KubenetmonError):
    """A merged batch holds batches already delivered and new ones: deliver its parts one by one.

    Raised by a queue that remembers named batches (after a restart, a producer
    re-sent a batch it already holds), so that the merging stage can hand the
    parts on alone: the copies are dropped as duplicates, the new ones queued.
    """

    def __init__(self, message: str, seen: list[str]) -> None:
        super().__init__(message)
        self.seen = seen
