"""Exponential backoff with jitter, as the OpenTelemetry exporters do it."""

from __future__ import annotations

import random
from collections.abc import Iterator

from kubenetmon.exporterhelper.config import RetryConfig

__all__ = ["backoff_intervals"]


def backoff_intervals(config: RetryConfig, rng: random.Random | None = None) -> Iterator[float]:
    """Yield the waits before each retry; stops when ``max_elapsed_time`` would be exceeded.

    The un-jittered interval grows by ``multiplier`` up to ``max_interval``;
    each yielded wait is that interval × a factor drawn from
    ``[1 - randomization_factor, 1 + randomization_factor]``.
    """
    rng = rng or random.Random()
    interval = config.initial_interval
    elapsed = 0.0
    while True:
        f = config.randomization_factor
        wait = interval * (1 - f + 2 * f * rng.random()) if f else interval
        if config.max_elapsed_time and elapsed + wait > config.max_elapsed_time:
            return
        elapsed += wait
        yield wait
        interval = min(interval * config.multiplier, config.max_interval)
