"""The loopback API server speaks the protocol the real client expects (it is shared with e2e tests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch

from tests.fixtures.kubeapi import KubeAPIServer


@pytest.fixture
def core(kubeapi: KubeAPIServer, tmp_path: Path) -> Iterator[Any]:
    api_client = config.new_client_from_config(config_file=str(kubeapi.write_kubeconfig(tmp_path)))
    yield client.CoreV1Api(api_client)
    api_client.close()


def test_typed_list_through_the_client_models(kubeapi: KubeAPIServer, core: Any) -> None:
    kubeapi.add_node("n1", internal_ips=["10.0.0.1"], zone="z1")
    kubeapi.add_pod("p1", "ns1", node="n1", ip="10.1.0.1", labels={"a": "b"})
    pods = core.list_pod_for_all_namespaces()
    assert [(p.metadata.namespace, p.metadata.name, p.status.pod_ip) for p in pods.items] == [("ns1", "p1", "10.1.0.1")]
    assert int(pods.metadata.resource_version) == kubeapi.resource_version
    node = core.read_node("n1")
    assert node.metadata.labels["topology.kubernetes.io/zone"] == "z1"
    assert [p.metadata.name for p in core.list_namespaced_pod("ns1").items] == ["p1"]
    assert core.list_namespaced_pod("other").items == []


def test_paged_list_is_a_consistent_snapshot(kubeapi: KubeAPIServer, core: Any) -> None:
    for i in range(5):
        kubeapi.add_pod(f"p{i}")
    first = core.list_pod_for_all_namespaces(limit=2)
    kubeapi.add_pod("p-late")  # after the snapshot: must not appear in later pages
    names = [p.metadata.name for p in first.items]
    token = first.metadata._continue
    while token:
        page = core.list_pod_for_all_namespaces(limit=2, _continue=token)
        names += [p.metadata.name for p in page.items]
        token = page.metadata._continue
    assert names == [f"p{i}" for i in range(5)]


def test_continue_token_after_compaction_is_410(kubeapi: KubeAPIServer, core: Any) -> None:
    for i in range(3):
        kubeapi.add_pod(f"p{i}")
    first = core.list_pod_for_all_namespaces(limit=1)
    kubeapi.compact()
    with pytest.raises(client.ApiException) as err:
        core.list_pod_for_all_namespaces(limit=1, _continue=first.metadata._continue)
    assert err.value.status == 410


def test_watch_replays_changes_after_the_resource_version_then_ends_on_timeout(
    kubeapi: KubeAPIServer, core: Any
) -> None:
    kubeapi.add_pod("p0")
    rv = core.list_pod_for_all_namespaces().metadata.resource_version
    kubeapi.add_pod("p1", ip="10.1.0.1")
    kubeapi.update_pod("p1", phase="Succeeded")
    kubeapi.delete_pod("p0")
    events = [(e["type"], e["object"].metadata.name) for e in
              watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version=rv, timeout_seconds=1)]
    assert events == [("ADDED", "p1"), ("MODIFIED", "p1"), ("DELETED", "p0")]


def test_watch_without_resource_version_starts_with_synthetic_added_events(
    kubeapi: KubeAPIServer, core: Any
) -> None:
    kubeapi.add_pod("a")
    kubeapi.add_pod("b")
    events = [(e["type"], e["object"].metadata.name) for e in
              watch.Watch().stream(core.list_pod_for_all_namespaces, timeout_seconds=1)]
    assert events == [("ADDED", "a"), ("ADDED", "b")]


def test_watch_from_compacted_resource_version_gets_error_410(kubeapi: KubeAPIServer, core: Any) -> None:
    kubeapi.add_pod("a")
    rv = core.list_pod_for_all_namespaces().metadata.resource_version
    kubeapi.add_pod("b")
    kubeapi.compact()
    resp = core.list_pod_for_all_namespaces(watch=True, resource_version=rv, timeout_seconds=1,
                                            _preload_content=False)
    lines = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in lines] == [("ERROR", 410, "Expired")]


def test_field_selector_filters_list_and_watch(kubeapi: KubeAPIServer, core: Any) -> None:
    kubeapi.add_pod("a", node="n1")
    kubeapi.add_pod("b", node="n2")
    listed = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1")
    assert [p.metadata.name for p in listed.items] == ["a"]
    kubeapi.add_pod("c", node="n1")
    kubeapi.add_pod("d", node="n2")
    kubeapi.update_pod("a", node="n2")  # leaves the selection: seen as DELETED
    events = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        core.list_pod_for_all_namespaces, field_selector="spec.nodeName=n1",
        resource_version=listed.metadata.resource_version, timeout_seconds=1)]
    assert events == [("ADDED", "c"), ("DELETED", "a")]
    others = core.list_pod_for_all_namespaces(field_selector="spec.nodeName!=n1")
    assert [p.metadata.name for p in others.items] == ["a", "b", "d"]


def test_bookmarks_only_for_watches_that_ask(tmp_path: Path) -> None:
    with KubeAPIServer(bookmark_interval=0.2) as api:
        api.add_pod("a")
        rv = str(api.resource_version)
        api_client = config.new_client_from_config(config_file=str(api.write_kubeconfig(tmp_path)))
        core = client.CoreV1Api(api_client)
        raw = core.list_pod_for_all_namespaces(
            watch=True, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=1,
            _preload_content=False).read()
        events = [json.loads(line) for line in raw.splitlines() if line.strip()]
        assert events and {e["type"] for e in events} == {"BOOKMARK"}
        assert events[-1]["object"]["metadata"]["resourceVersion"] == rv
        raw = core.list_pod_for_all_namespaces(
            watch=True, resource_version=rv, timeout_seconds=1, _preload_content=False).read()
        assert raw.strip() == b""
        api_client.close()
