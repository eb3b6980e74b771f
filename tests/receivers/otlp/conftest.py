"""Receivers started by a test are shut down at its end, even when it fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kubenetmon.receivers.otlp import OtlpReceiver
from tests.otlp.otlp_testkit import start_receiver


@pytest.fixture
def receivers() -> Iterator[Callable[..., OtlpReceiver]]:
    started: list[OtlpReceiver] = []

    def start(consumer: Any, **kw: Any) -> OtlpReceiver:
        r = start_receiver(consumer, **kw)
        started.append(r)
        return r

    yield start
    for r in started:
        r.shutdown(2.0)
