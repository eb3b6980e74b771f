"""The kubernetes source: the real ``kubernetes`` client against the loopback API server."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubenetmon.errors import BackpressureError
from kubenetmon.flows import FlowBatch
from kubenetmon.testing import check_lifecycle
from tests.fixtures.kubeapi import KubeAPIServer
from tests.processors.k8s_attributes.helpers import ProcessorMaker, eventually, kube_config, record


def seed(api: KubeAPIServer) -> None:
    api.add_node("node-a", internal_ips=["10.0.0.1"], zone="za")
    api.add_node("node-b", internal_ips=["10.0.0.2"], zone="zb")
    api.add_pod("client", node="node-a", ip="10.1.0.5", labels={"app.kubernetes.io/name": "client"})
    api.add_pod("server", "shop", node="node-b", ip="10.2.0.7", labels={"app.kubernetes.io/name": "server"})


def remote_of(processor, sink, dst: str) -> tuple[str, str, str]:  # type: ignore[no-untyped-def]
    """Attribute client → dst through the processor; return the remote's (pod, node, zone)."""
    processor.consume(FlowBatch([record("10.1.0.5", dst)]))
    flow = sink.batches[-1].flows[0]
    return flow.remote.pod, flow.remote.node, flow.remote.availability_zone


def restarts(processor, resource: str, reason: str) -> float:  # type: ignore[no-untyped-def]
    metrics = processor.source._metrics["restarts"]
    return float(metrics.labels(resource=resource, reason=reason)._value.get())


def test_initial_list_in_pages_fills_the_index(kubeapi: KubeAPIServer, tmp_path: Path,
                                              make_processor: ProcessorMaker) -> None:
    seed(kubeapi)
    for i in range(7):
        kubeapi.add_pod(f"extra-{i}", node="node-b", ip=f"10.2.1.{i}")
    processor, sink = make_processor(kube_config(kubeapi, tmp_path, page_size=3))
    eventually(processor.is_ready, what="initial sync")
    assert processor.index.pod_count == 9 and processor.index.node_count == 2
    assert kubeapi.list_calls("pods") == 3  # 9 pods in pages of 3
    assert remote_of(processor, sink, "10.2.0.7") == ("server", "node-b", "zb")
    assert sink.batches[-1].flows[0].local.pod == "client"


def test_not_ready_and_backpressure_until_both_lists_complete(kubeapi: KubeAPIServer, tmp_path: Path,
                                                              make_processor: ProcessorMaker) -> None:
    seed(kubeapi)
    kubeapi.hold_lists()
    processor, sink = make_processor(kube_config(kubeapi, tmp_path))
    eventually(lambda: kubeapi.list_calls("pods") and kubeapi.list_calls("nodes"), what="list requests")
    assert not processor.is_ready()
    batch = FlowBatch([record("10.1.0.5", "10.2.0.7")])
    with pytest.raises(BackpressureError):
        processor.consume(batch)
    assert len(batch.records) == 1 and sink.batches == []
    kubeapi.release_lists()
    eventually(processor.is_ready, what="sync after release")
    processor.consume(batch)
    assert len(sink.flows) == 2


def test_added_modified_deleted_events_update_the_index(kubeapi: KubeAPIServer, tmp_path: Path,
                                                       make_processor: ProcessorMaker) -> None:
    seed(kubeapi)
    processor, sink = make_processor(kube_config(kubeapi, tmp_path))
    eventually(processor.is_ready)
    kubeapi.add_pod("late", node="node-b", ip="10.2.0.9", labels={"app.kubernetes.io/name": "late"})
    eventually(lambda: "10.2.0.9" in processor.index.pod_by_ip, what="ADDED")
    assert remote_of(processor, sink, "10.2.0.9") == ("late", "node-b", "zb")
    kubeapi.update_pod("late", labels={"app.kubernetes.io/name": "renamed"})
    eventually(lambda: processor.index.pod_by_ip["10.2.0.9"].app == "renamed", what="MODIFIED")
    kubeapi.delete_pod("late")
    eventually(lambda: "10.2.0.9" not in processor.index.pod_by_ip, what="DELETED")
    assert remote_of(processor, sink, "10.2.0.9") == ("", "", "")
    assert kubeapi.list_calls("pods") == 1


def test_pod_that_gets_its_ip_later_becomes_attributable(kubeapi: KubeAPIServer, tmp_path: Path,
                                                        make_processor: ProcessorMaker) -> None:
    seed(kubeapi)
    kubeapi.add_pod("starting", node="node-b", phase="Pending")
    processor, sink = make_processor(kube_config(kubeapi, tmp_path))
    eventually(processor.is_ready)
    assert processor.index.pod("default/starting") is not None
    kubeapi.update_pod("starting", ip="10.2.0.20", phase="Running")
    eventually(lambda: "10.2.0.20" in processor.index.pod_by_ip, what="IP assigned")
    assert remote_of(processor, sink, "10.2.0.20") == ("starting", "node-b", "zb")


def test_finished_pod_leaves_the_ip_index_and_its_ip_can_be_reused(kubeapi: KubeAPIServer, tmp_path: Path,
                                                                  make_processor: ProcessorMaker) -> None:
    seed(kubeapi)
    kubeapi.add_pod("job", node="node-b", ip="10.2.0.30")
    processor, sink = make_processor(kube_config(kubeapi, tmp_path))
    eventually(processor.is_ready)
    kubeapi.update_pod("job", phase="Succeeded")
    eventually(lambda: "10.2.0.30" not in processor.index.pod_by_ip, what="finished pod leaves")
    kubeapi.add_pod("reuser", node="node-a", ip="10.2.0.30")
    eventually(lambda: "10.2.0.30" in processor.index.pod_by_ip, what="IP reused")
    assert remote_of(processor, sink, "10.2.0.30") == ("reuser", "node-a", "za")


def test_node_that_changes_zone_changes_the_zone_of_its_pods(kubeapi: KubeAPIServer, tmp_path: Path,
                                                            make_processor: ProcessorMaker) -> None:
    seed(kubeapi)
    processor, sink = make_processor(kube_config(kubeapi, tmp_path))
    eventually(processor.is_ready)
    kubeapi.update_node("node-b", zone="zb-2")
    eventually(lambda: processor.index.zone_of.get("node-b") == "zb-2", what="zone change")
    assert remote_of(processor, sink, "10.2.0.7") == ("server", "node-b", "zb-2")


def test_dropped_stream_is_resumed_from_its_resource_version_without_relist(
    kubeapi: KubeAPIServer, tmp_path: Path, make_processor: ProcessorMaker
) -> None:
    seed(kubeapi)
    processor, _ = make_processor(kube_config(kubeapi, tmp_path))
    eventually(processor.is_ready)
    eventually(lambda: kubeapi.open_watches("pods") == 1, what="pods watch open")
    kubeapi.hold_watches()
    kubeapi.drop_watches()
    eventually(lambda: kubeapi.open_watches("pods") == 0, what="watch dropped")
    kubeapi.add_pod("while-away", node="node-b", ip="10.2.0.40")  # only the RV replay can deliver this
    kubeapi.release_watches()
    eventually(lambda: "10.2.0.40" in processor.index.pod_by_ip, what="change replayed")
    assert kubeapi.list_calls("pods") == 1
    assert kubeapi.watch_calls("pods") >= 2
    assert restarts(processor, "pods", "protocol_error") >= 1
    assert processor.health() is None


@pytest.mark.parametrize("expired_as_http", [False, True], ids=["error-event", "http-410"])
def test_410_gone_leads_to_a_relist_that_catches_changes_made_meanwhile(
    tmp_path: Path, make_processor: ProcessorMaker, expired_as_http: bool
) -> None:
    with KubeAPIServer(expired_as_http=expired_as_http) as api:
        seed(api)
        api.add_pod("doomed", node="node-b", ip="10.2.0.50")
        processor, sink = make_processor(kube_config(api, tmp_path))
        eventually(processor.is_ready)
        eventually(lambda: api.open_watches("pods") == 1, what="pods watch open")
        api.hold_watches()
        api.drop_watches()
        eventually(lambda: api.open_watches("pods") == 0, what="watch dropped")
        api.delete_pod("doomed")
        api.add_pod("newcomer", node="node-b", ip="10.2.0.51")
        api.update_node("node-b", zone="zb-new")
        api.compact()  # the history of those changes is gone: only a re-list can see them
        api.release_watches()
        eventually(lambda: "10.2.0.51" in processor.index.pod_by_ip, what="re-list")
        eventually(lambda: processor.index.zone_of.get("node-b") == "zb-new", what="nodes re-list")
        assert "10.2.0.50" not in processor.index.pod_by_ip
        assert api.list_calls("pods") == 2
        relists = processor.source._metrics["relists"].labels(resource="pods")._value.get()
        assert relists == 1
        assert remote_of(processor, sink, "10.2.0.51") == ("newcomer", "node-b", "zb-new")


def test_open_watch_told_410_relists(kubeapi: KubeAPIServer, tmp_path: Path,
                                     make_processor: ProcessorMaker) -> None:
    seed(kubeapi)
    processor, _ = make_processor(kube_config(kubeapi, tmp_path))
    eventually(processor.is_ready)
    eventually(lambda: kubeapi.open_watches("nodes") == 1)
    kubeapi.compact(notify_watches=True)
    eventually(lambda: kubeapi.list_calls("nodes") == 2, what="re-list after ERROR 410")
    assert restarts(processor, "nodes", "expired") >= 1


def test_bookmarks_advance_the_resume_point(tmp_path: Path, make_processor: ProcessorMaker) -> None:
    with KubeAPIServer() as api:
        seed(api)
        processor, _ = make_processor(kube_config(api, tmp_path))
        eventually(processor.is_ready)
        eventually(lambda: api.open_watches("pods") == 1)
        for i in range(3):  # node changes move the global RV past the last pod event
            api.add_node(f"node-x{i}", internal_ips=[f"10.0.9.{i}"])
        rv_after_nodes = api.resource_version
        api.send_bookmarks()
        events = processor.source._metrics["events"]
        eventually(lambda: events.labels(resource="pods", type="BOOKMARK")._value.get() >= 1, what="bookmark")
        api.drop_watches()
        eventually(lambda: api.watch_calls("pods") >= 2, what="resumed watch")
        resumed = [r for r in api.requests if r.resource == "pods" and r.watch][-1]
        assert resumed.query["resourceVersion"] == str(rv_after_nodes)
        assert resumed.query["allowWatchBookmarks"] in ("true", "True")
        assert api.list_calls("pods") == 1


def test_watch_timeout_resumes_without_relist(kubeapi: KubeAPIServer, tmp_path: Path,
                                              make_processor: ProcessorMaker) -> None:
    seed(kubeapi)
    processor, _ = make_processor(kube_config(kubeapi, tmp_path, watch_timeout=1))
    eventually(processor.is_ready)
    eventually(lambda: kubeapi.watch_calls("pods") >= 3, timeout=15, what="watches renewed after timeout")
    assert kubeapi.list_calls("pods") == 1
    assert restarts(processor, "pods", "timeout") >= 2
    watch = next(r for r in kubeapi.requests if r.resource == "pods" and r.watch)
    assert watch.query["timeoutSeconds"] == "1"


def test_silent_watch_hits_the_read_timeout_and_is_resumed_without_relist(
    kubeapi: KubeAPIServer, tmp_path: Path, make_processor: ProcessorMaker
) -> None:
    # The loopback server sends nothing on a quiet watch without bookmarks: a
    # stalled API server looks the same to the client (urllib3 ReadTimeoutError).
    seed(kubeapi)
    processor, _ = make_processor(kube_config(kubeapi, tmp_path, read_timeout=0.3))
    eventually(processor.is_ready)
    eventually(lambda: restarts(processor, "pods", "read_timeout") >= 1, what="read timeout")
    kubeapi.add_pod("after-stall", node="node-b", ip="10.2.0.90")
    eventually(lambda: "10.2.0.90" in processor.index.pod_by_ip, what="event after resume")
    assert kubeapi.list_calls("pods") == 1
    assert processor.health() is None


def test_api_server_down_at_start_is_retried_until_it_answers(tmp_path: Path,
                                                             make_processor: ProcessorMaker) -> None:
    api = KubeAPIServer().start()
    seed(api)
    config = kube_config(api, tmp_path)
    port = int(api.url.rsplit(":", 1)[1])
    api.stop()
    processor, _ = make_processor(config)
    eventually(lambda: restarts(processor, "pods", "connection_error") >= 1, what="failed attempt")
    assert not processor.is_ready() and processor.health() is None
    # Bring a server back on the same port.
    revived = KubeAPIServer()
    import http.server

    from tests.fixtures import kubeapi as kubeapi_module

    revived._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), kubeapi_module._make_handler(revived))
    revived._server.daemon_threads = True
    import threading

    threading.Thread(target=revived._server.serve_forever, daemon=True).start()
    try:
        seed(revived)
        eventually(processor.is_ready, what="sync once the API answers")
        assert processor.index.pod_count == 2
    finally:
        revived.stop()


def test_pod_field_selector_limits_the_index(kubeapi: KubeAPIServer, tmp_path: Path,
                                             make_processor: ProcessorMaker) -> None:
    seed(kubeapi)
    processor, _ = make_processor(kube_config(kubeapi, tmp_path, pod_field_selector="spec.nodeName=node-a"))
    eventually(processor.is_ready)
    assert set(processor.index.pod_by_ip) == {"10.1.0.5"}
    kubeapi.add_pod("b2", node="node-b", ip="10.2.0.60")
    kubeapi.add_pod("a2", node="node-a", ip="10.1.0.60")
    eventually(lambda: "10.1.0.60" in processor.index.pod_by_ip)
    assert "10.2.0.60" not in processor.index.pod_by_ip


def test_owners_watch_replicasets(kubeapi: KubeAPIServer, tmp_path: Path, make_processor: ProcessorMaker) -> None:
    seed(kubeapi)
    kubeapi.add_replicaset("web-7f9", owner=("Deployment", "web"))
    kubeapi.add_pod("web-7f9-x", node="node-b", ip="10.2.0.80", owner=("ReplicaSet", "web-7f9"))
    processor, sink = make_processor({**kube_config(kubeapi, tmp_path), "owners": True})
    eventually(processor.is_ready)
    processor.consume(FlowBatch([record("10.1.0.5", "10.2.0.80")]))
    remote = sink.flows[0].remote
    assert (remote.owner_kind, remote.owner_name) == ("Deployment", "web")
    kubeapi.add_replicaset("api-1", owner=("Deployment", "api"))
    eventually(lambda: processor.index.rs_owner.get("default/api-1") == ("Deployment", "api"))


def test_metrics_count_indexed_objects_lookups_and_drops(kubeapi: KubeAPIServer, tmp_path: Path,
                                                         make_processor: ProcessorMaker) -> None:
    seed(kubeapi)
    processor, _ = make_processor(kube_config(kubeapi, tmp_path))
    eventually(processor.is_ready)
    processor.consume(FlowBatch([record("10.1.0.5", "10.2.0.7"), record("10.0.0.1", "10.2.0.7"),
                                 record("10.1.0.5", "203.0.113.7")]))
    assert processor._m_dropped.value(reason="node_flow") == 1
    assert processor._m_lookups.value(result="hit") == 3
    assert processor._m_lookups.value(result="miss") == 1
    assert processor._m_records.value() == 2
    since = processor.source._metrics["since_event"].labels(resource="pods")
    assert 0 <= next(iter(since._child_samples())).value < 60


def test_lifecycle_contract_with_kubernetes_source(kubeapi: KubeAPIServer, tmp_path: Path,
                                                   make_processor: ProcessorMaker) -> None:
    seed(kubeapi)
    processor, _ = make_processor(kube_config(kubeapi, tmp_path), start=False)
    check_lifecycle(processor)
    fresh, _ = make_processor(kube_config(kubeapi, tmp_path), start=False)
    fresh.shutdown(1)  # without start
    fresh.shutdown(1)
