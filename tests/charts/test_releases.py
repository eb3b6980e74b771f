"""Two releases of each chart side by side: nothing they create shares a name."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.charts.conftest import RenderFn
from tests.charts.helm import AGENT, README_AGENT_SETS, README_SERVER_SETS, SERVER

CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "PriorityClass"}


def _identity(doc: dict[str, Any], namespace: str) -> tuple[str, str, str]:
    scope = "" if doc["kind"] in CLUSTER_SCOPED else doc["metadata"].get("namespace", namespace)
    return doc["kind"], scope, doc["metadata"]["name"]


def test_two_releases_in_one_namespace_do_not_collide(render: RenderFn) -> None:
    namespace = "metering"
    rendered = [
        render(SERVER, release="blue", namespace=namespace, sets=README_SERVER_SETS),
        render(SERVER, release="green", namespace=namespace, sets=README_SERVER_SETS),
        render(AGENT, release="blue", namespace=namespace, sets=README_AGENT_SETS),
        render(AGENT, release="green", namespace=namespace, sets=README_AGENT_SETS),
    ]
    names = Counter(_identity(doc, namespace) for r in rendered for doc in r.docs)
    assert [name for name, count in names.items() if count > 1] == []
    # Each workload selects only its own pods.
    selectors = [
        tuple(sorted(doc["spec"]["selector"]["matchLabels"].items()))
        for r in rendered for doc in r.docs if doc["kind"] in ("Deployment", "DaemonSet")
    ]
    assert len(set(selectors)) == len(selectors)
    # Agents of two releases on one node keep separate checkpoints and queues.
    host_paths = [v["hostPath"]["path"] for r in rendered[2:] for v in r.pod_spec()["volumes"] if "hostPath" in v]
    assert len(set(host_paths)) == len(host_paths) == 4


def test_same_release_name_in_two_namespaces_does_not_collide_on_cluster_objects(render: RenderFn) -> None:
    docs = [
        doc
        for namespace in ("team-a", "team-b")
        for chart in (SERVER, AGENT)
        for doc in render(chart, release="kubenetmon", namespace=namespace).docs
        if doc["kind"] in CLUSTER_SCOPED
    ]
    assert {d["kind"] for d in docs} == CLUSTER_SCOPED
    names = Counter((d["kind"], d["metadata"]["name"]) for d in docs)
    assert [name for name, count in names.items() if count > 1] == []


def test_every_referenced_object_is_one_the_release_creates_or_the_user_named(render: RenderFn) -> None:
    rendered = render(SERVER, release="blue", namespace="metering", sets=README_SERVER_SETS)
    created = {(d["kind"], d["metadata"]["name"]) for d in rendered.docs}
    pod = rendered.pod_spec()
    for volume in pod["volumes"]:
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in created
        if "secret" in volume:
            assert ("Secret", volume["secret"]["secretName"]) in created
    assert ("ServiceAccount", pod["serviceAccountName"]) in created
