"""The window of delivered batch ids: per node, bounded in count and time, in-flight guard."""

from __future__ import annotations

import time

from kubenetmon.receivers.otlp import BatchIdWindow


def deliver(window: BatchIdWindow, nodes: list[str], batch_id: str) -> str:
    state = window.begin(nodes, batch_id)
    if state == "new":
        window.end(nodes, batch_id, delivered=True)
    return state


def test_a_delivered_id_is_a_duplicate_for_its_node_only() -> None:
    w = BatchIdWindow(10, 60)
    assert deliver(w, ["a"], "x") == "new"
    assert deliver(w, ["a"], "x") == "duplicate"
    assert deliver(w, ["b"], "x") == "new"


def test_an_id_is_remembered_only_when_the_batch_was_delivered() -> None:
    w = BatchIdWindow(10, 60)
    assert w.begin(["a"], "x") == "new"
    assert w.begin(["a"], "x") == "in_flight"
    w.end(["a"], "x", delivered=False)
    assert deliver(w, ["a"], "x") == "new"


def test_a_request_of_several_nodes_is_a_duplicate_only_when_all_delivered_it() -> None:
    w = BatchIdWindow(10, 60)
    deliver(w, ["a"], "x")
    assert deliver(w, ["a", "b"], "x") == "new"
    assert deliver(w, ["a", "b"], "x") == "duplicate"


def test_the_window_is_bounded_in_count() -> None:
    w = BatchIdWindow(3, 60)
    for i in range(5):
        deliver(w, ["a"], str(i))
    assert len(w) == 3
    assert deliver(w, ["a"], "0") == "new"
    assert deliver(w, ["a"], "4") == "duplicate"


def test_ids_expire_after_the_ttl_and_silent_nodes_are_swept() -> None:
    w = BatchIdWindow(10, 0.2)
    deliver(w, ["a"], "x")
    deliver(w, ["gone"], "y")
    time.sleep(0.3)
    assert deliver(w, ["a"], "x") == "new"  # expired, so consumed again
    assert len(w) == 1  # the sweep dropped the node that went silent
