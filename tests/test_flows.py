from __future__ import annotations

from kubenetmon.flows import Endpoint, Flow, FlowBatch
from tests.flowgen import record


def test_copy_is_independent_but_keeps_twins_sharing_endpoints() -> None:
    local, remote = Endpoint(address="10.0.0.1", pod="a"), Endpoint(address="10.0.0.2")
    out = Flow("out", "tcp", "ipv4", local, remote, bytes=1)
    in_ = Flow("in", "tcp", "ipv4", local, remote, bytes=2)
    batch = FlowBatch(records=[record()], flows=[out, in_])
    copy = batch.copy()
    copy.flows[0].local.pod = "changed"
    copy.flows[0].connection_flags["X"] = True
    copy.records[0].original_bytes = 0
    assert out.local.pod == "a" and not out.connection_flags and batch.records[0].original_bytes == 100
    assert copy.flows[1].local.pod == "changed"  # the twin in the copy shares the copied endpoint
    assert copy.flows[0].bytes == 1 and copy.flows[1].bytes == 2


def test_mirrored_record_has_no_nat() -> None:
    r = record()
    assert r.is_mirrored()
    r.reply_src = "10.9.9.9"
    assert not r.is_mirrored()
