from __future__ import annotations

import itertools
import random

from kubenetmon.exporterhelper import RetryConfig, backoff_intervals


def test_schedule_without_jitter_grows_by_the_multiplier_up_to_the_cap() -> None:
    config = RetryConfig(
        initial_interval=5, max_interval=30, multiplier=1.5, randomization_factor=0, max_elapsed_time=0
    )
    waits = list(itertools.islice(backoff_intervals(config), 8))
    expected = [5.0]
    while len(expected) < 8:
        expected.append(min(expected[-1] * 1.5, 30.0))
    assert waits == expected
    assert waits[-1] == 30.0 and waits[1] == 7.5


def test_schedule_stops_before_max_elapsed_time() -> None:
    config = RetryConfig(initial_interval=5, max_interval=30, randomization_factor=0, max_elapsed_time=60)
    waits = list(backoff_intervals(config))
    assert sum(waits) <= 60
    assert sum(waits) + min(waits[-1] * 1.5, 30) > 60  # one more would have exceeded it


def test_jitter_stays_within_the_randomization_band() -> None:
    config = RetryConfig(initial_interval=5, max_interval=30, randomization_factor=0.5, max_elapsed_time=0)
    plain = RetryConfig(initial_interval=5, max_interval=30, randomization_factor=0, max_elapsed_time=0)
    jittered = list(itertools.islice(backoff_intervals(config, random.Random(7)), 20))
    base = list(itertools.islice(backoff_intervals(plain), 20))
    for wait, interval in zip(jittered, base, strict=True):
        assert 0.5 * interval <= wait <= 1.5 * interval
    assert len(set(jittered)) > 15  # actually random


def test_default_is_the_opentelemetry_schedule() -> None:
    config = RetryConfig()
    defaults = (config.initial_interval, config.max_interval, config.max_elapsed_time, config.multiplier)
    assert defaults == (5, 30, 300, 1.5)
