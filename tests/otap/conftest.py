"""Exporters and receivers started by a test are shut down at its end, even when it fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from kubenetmon.exporters.otlp import OtlpExporter, OtlpExporterConfig
from kubenetmon.testing import StaticHost
from tests.otlp.otlp_testkit import (
    make_exporter,
    receivers,  # noqa: F401 (fixture)
)


@pytest.fixture
def exporters() -> Iterator[Callable[..., OtlpExporter]]:
    started: list[OtlpExporter] = []

    def start(config: OtlpExporterConfig, *, run: bool = True) -> OtlpExporter:
        e = make_exporter(config)
        if run:
            e.start(StaticHost())
        else:
            e.open()
        started.append(e)
        return e

    yield start
    for e in started:
        e.shutdown(1.0)
        e.close()
