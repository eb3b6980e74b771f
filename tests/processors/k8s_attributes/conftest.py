"""Fixtures for the k8s_attributes tests: a loopback API server and processor builders."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kubenetmon.component import Kind
from kubenetmon.identity import Identity
from kubenetmon.processors.k8s_attributes import K8sAttributesConfig, K8sAttributesProcessor, factory
from kubenetmon.testing import SinkConsumer, StaticHost, create_settings
from tests.fixtures.kubeapi import KubeAPIServer
from tests.processors.k8s_attributes.helpers import ProcessorMaker


@pytest.fixture
def kubeapi() -> Iterator[KubeAPIServer]:
    with KubeAPIServer() as server:
        yield server


@pytest.fixture
def make_processor() -> Iterator[ProcessorMaker]:
    """Build (and later shut down) processors: ``make_processor(config_dict, cluster=...)``."""
    made: list[K8sAttributesProcessor] = []

    def make(config: dict[str, Any], *, cluster: str = "prod-1", start: bool = True) -> tuple[
        K8sAttributesProcessor, SinkConsumer
    ]:
        sink = SinkConsumer()
        settings = create_settings(Kind.PROCESSOR, "k8s_attributes", identity=Identity(cluster=cluster))
        processor = factory.create(settings, K8sAttributesConfig.model_validate(config), sink)
        assert isinstance(processor, K8sAttributesProcessor)
        made.append(processor)
        if start:
            processor.start(StaticHost())
        return processor, sink

    yield make
    for processor in made:
        processor.shutdown(5)
