"""The lifecycle contract, checked for every registered factory.

create → start → shutdown → shutdown, and shutdown without start, with a
config that lets the component really start here (loopback ports, temporary
paths, a network namespace of our own for conntrack). A component type
without an entry below is checked with its default config, so a new built-in
is covered the moment it is registered.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubenetmon.component import Factory, Kind
from kubenetmon.identity import Identity
from kubenetmon.plugins import build_plugin_manager, load_components
from kubenetmon.testing import SinkConsumer, StaticHost, check_lifecycle, create_settings

RANGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cloud-ranges"
IDENTITY = Identity(cloud="aws", region="us-west-2", cluster="c", environment="test")


def _static_inventory(tmp: Path) -> dict[str, Any]:
    inventory = tmp / "inventory.yaml"
    inventory.write_text(
        "nodes:\n  - {name: n1, zone: z1, addresses: [10.0.0.1]}\n"
        "pods:\n  - {name: p1, namespace: default, node: n1, ips: [10.1.0.1], labels: {app.kubernetes.io/name: a}}\n"
    )
    return {"source": "static", "static": {"path": str(inventory)}}


def _aws_only(tmp: Path) -> dict[str, Any]:
    aws = tmp / "aws.json"
    aws.write_text(
        '{"syncToken": "1", "createDate": "2025-01-01-00-00-00", "prefixes": '
        '[{"ip_prefix": "52.0.0.0/16", "region": "us-west-2", "service": "S3", "network_border_group": "us-west-2"}],'
        ' "ipv6_prefixes": []}'
    )
    off = {"enabled": False}
    return {"sources": {"aws": {"file": str(aws), "url": ""}, "gcp": off, "google": off, "azure": off, "oracle": off},
            "offline": True}


CONFIGS: dict[tuple[Kind, str], Callable[[Path], dict[str, Any]]] = {
    (Kind.RECEIVER, "otlp"): lambda tmp: {"grpc": {"endpoint": "127.0.0.1:0"}},
    (Kind.RECEIVER, "conntrack"): lambda tmp: {"netns": "knmlife", "node_name": "n1", "skip_sanity_check": True,
                                               "checkpoint_path": str(tmp / "checkpoint")},
    (Kind.PROCESSOR, "k8s_attributes"): _static_inventory,
    (Kind.PROCESSOR, "cloud_prefix"): _aws_only,
    (Kind.EXPORTER, "clickhouse"): lambda tmp: {"endpoint": f"chdb://{tmp / 'chdb'}"},
    (Kind.EXPORTER, "otlp"): lambda tmp: {"endpoint": "127.0.0.1:9", "tls": {"insecure": True}},
    (Kind.EXTENSION, "health_check"): lambda tmp: {"endpoint": "127.0.0.1:0"},
}

REGISTRY = load_components(build_plugin_manager(load_entry_points=False))
FACTORIES = [entry.factory for entry in REGISTRY.all()]


@pytest.fixture
def conntrack_namespace() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the conntrack receiver needs root to open netlink sockets in a namespace of its own")
    from kubenetmon.netns import NamespaceRegistry

    with NamespaceRegistry("knmlife") as namespaces:
        ns = namespaces.create("x")
        # The receiver is pointed at the namespace by name: link the registry's name to "knmlife".
        link = Path("/var/run/netns/knmlife")
        link.touch()
        os.system(f"mount --bind /var/run/netns/{ns.name} {link}")
        try:
            yield
        finally:
            os.system(f"umount {link}")
            link.unlink()


def _config(factory: Factory[Any], tmp: Path) -> Any:
    raw = CONFIGS.get((factory.kind, factory.type), lambda _: {})(tmp)
    return factory.config_model.model_validate(raw)


def _create(factory: Factory[Any], tmp: Path) -> Any:
    settings = create_settings(factory.kind, factory.type, identity=IDENTITY)
    config = _config(factory, tmp)
    if factory.kind in (Kind.RECEIVER, Kind.PROCESSOR):
        return factory.create(settings, config, SinkConsumer())  # type: ignore[attr-defined]
    return factory.create(settings, config)  # type: ignore[attr-defined]


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f"{f.kind.value}/{f.type}")
def test_every_component_honours_the_lifecycle_contract(factory: Factory[Any], tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    if factory.type == "conntrack":
        request.node.add_marker(pytest.mark.kernel)
        request.getfixturevalue("conntrack_namespace")
    _create(factory, tmp_path).shutdown()  # shutdown without start is a no-op
    component = _create(factory, tmp_path)
    check_lifecycle(component, StaticHost())
    assert factory.description
    for name, field in factory.config_model.model_fields.items():
        assert field.description, f"{factory.type}: config field {name!r} has no description"
