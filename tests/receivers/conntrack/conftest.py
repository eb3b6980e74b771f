"""Fixtures for the conntrack receiver's kernel tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kubenetmon.netns import NamespaceRegistry
from kubenetmon.receivers.conntrack import ConntrackConfig, ConntrackReceiver, factory
from kubenetmon.testing import SinkConsumer, create_component
from tests.receivers.conntrack.conntrack_topology import MakeReceiver


@pytest.fixture
def registry() -> Iterator[NamespaceRegistry]:
    with NamespaceRegistry("knmct") as reg:
        yield reg


@pytest.fixture
def make_receiver() -> Iterator[MakeReceiver]:
    """Build receivers (opened, not started: the test drives ``cycle()``); all shut down at the end."""
    made: list[ConntrackReceiver] = []

    def make(netns: str, *, consumer: SinkConsumer | None = None, open_: bool = True, **kw: Any) -> Any:
        config = ConntrackConfig(
            netns=netns, node_name="node-a", skip_sanity_check=kw.pop("skip_sanity_check", True), **kw
        )
        sink = consumer or SinkConsumer()
        receiver: ConntrackReceiver = create_component(factory, config, consumer=sink)
        made.append(receiver)
        if open_:
            receiver.open()
        return receiver, sink

    yield make
    for receiver in made:
        receiver.shutdown(10)
