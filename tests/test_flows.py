from __future__ import annotations

import pickle

import pyarrow as pa
import pytest

from kubenetmon import flows as flowmod
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


# -- the columnar contract --



def _flow(local: str = "10.0.0.1", remote: str = "fd00::2") -> Flow:
    return Flow(
        "out", "tcp", "ipv4", Endpoint(address=local, port=443, pod="a", cluster="c1"),
        Endpoint(address=remote, cloud_service="S3"), bytes=2**64 - 1, packets=3,
        connection_flags={"Z": True, "A": False}, observer="n1", start_ns=10, end_ns=20,
    )


def test_rows_and_tables_round_trip_by_name() -> None:
    rec = record()
    batch = FlowBatch(records=[rec], flows=[_flow()], batch_id="b-1")
    records, flows_ = batch.record_table(), batch.flow_table()
    assert records.schema.equals(flowmod.RECORD_SCHEMA) and flows_.schema.equals(flowmod.FLOW_SCHEMA)
    again = FlowBatch(records=records, flows=flows_, batch_id="b-1")
    assert again.records == [rec]
    flow = again.flows[0]
    assert flow.remote.address == "fd00::2" and flow.remote.cloud_service == "S3"
    assert flow.local == Endpoint(address="10.0.0.1", port=443, pod="a", cluster="c1")
    assert flow.bytes == 2**64 - 1 and flow.connection_flags == {"A": False, "Z": True}


def test_ipv4_is_mapped_into_the_ipv6_space_and_unknown_is_null() -> None:
    column = flowmod.pack_addresses(["10.0.0.1", "fd00::1", "", None])
    assert column.to_pylist()[0] == bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])
    assert column.null_count == 2
    assert flowmod.unpack_addresses(column) == ["10.0.0.1", "fd00::1", "", ""]


def test_a_bad_address_names_itself() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300' is not an IPv4 or IPv6 address"):
        flowmod.pack_addresses(["10.0.0.300"])


def test_ipc_round_trip_keeps_both_views_and_the_batch_id() -> None:
    batch = FlowBatch(records=[record()], flows=[_flow()], batch_id="agent-7:42")
    back = FlowBatch.from_ipc(batch.to_ipc(compression="lz4"))
    assert back.batch_id == "agent-7:42"
    assert back.record_table().equals(batch.record_table())
    assert back.flow_table().equals(batch.flow_table())
    assert pickle.loads(pickle.dumps(batch)).flows == batch.flows
    empty = FlowBatch.from_ipc(FlowBatch().to_ipc())
    assert empty.is_empty() and empty.batch_id == ""


def test_rows_handed_out_are_the_truth_for_later_columnar_stages() -> None:
    batch = FlowBatch(flows=FlowBatch(flows=[_flow()]).flow_table())
    batch.flows[0].connection_flags["NAT_GATEWAY"] = True  # a row-wise plugin
    assert batch.flow_table().column("connection_flags").to_pylist()[0] == [
        ("A", False), ("NAT_GATEWAY", True), ("Z", True)
    ]


def test_a_batch_with_other_columns_is_refused_with_the_way_out() -> None:
    with pytest.raises(TypeError, match="flows_from_columns"):
        FlowBatch(flows=pa.record_batch({"bytes": pa.array([1], pa.uint64())}))


def test_same_names_with_plain_types_are_cast_to_the_contract() -> None:
    plain = FlowBatch(records=[record()]).record_table().cast(
        pa.schema([pa.field(f.name, pa.utf8() if f.type == flowmod.STRING else f.type) for f in flowmod.RECORD_FIELDS])
    )
    assert FlowBatch(records=plain).record_table().schema.equals(flowmod.RECORD_SCHEMA)


def test_columns_by_name_default_to_not_known_and_with_columns_replaces_only_those() -> None:
    table = flowmod.flows_from_columns({"bytes": [5, 6], "local_address": ["10.0.0.1", "10.0.0.2"]})
    assert table.column("local_pod").to_pylist() == ["", ""]
    assert table.column("remote_address").null_count == 2
    changed = flowmod.with_columns(table, {"connection_class": ["INTRA_VPC", "UNKNOWN"]})
    assert changed.column("connection_class").to_pylist() == ["INTRA_VPC", "UNKNOWN"]
    assert changed.column("bytes") is not None and changed.column("bytes").equals(table.column("bytes"))
    with pytest.raises(ValueError, match="unknown column"):
        flowmod.flows_from_columns({"byte": [1]})


def test_copy_of_a_columnar_batch_shares_the_immutable_tables() -> None:
    batch = FlowBatch(flows=FlowBatch(flows=[_flow()]).flow_table(), batch_id="x")
    copy = batch.copy()
    assert copy.flow_table() is batch.flow_table() and copy.batch_id == "x"


def test_serialising_a_columnar_batch_does_not_import_pandas() -> None:
    # pandas (+45 MB) comes in with any conversion from Python objects; the agent's queue must not need it.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from kubenetmon.flows import FlowBatch, records_from_columns\n"
        "import pyarrow as pa\n"
        "t = records_from_columns({}, num_rows=3)\n"
        "FlowBatch.from_ipc(FlowBatch(records=t).to_ipc()).flow_table()\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"


def test_an_ipv4_mapped_address_of_an_ipv6_connection_stays_ipv6_text() -> None:
    rec = record()
    rec.network_type, rec.src, rec.reply_dst = "ipv6", "::ffff:10.0.0.1", "::ffff:10.0.0.1"
    rec.dst = rec.reply_src = "fd00::1"
    back = FlowBatch(records=FlowBatch(records=[rec]).record_table()).records[0]
    assert back.src == "::ffff:10.0.0.1" and back.dst == "fd00::1"
    flow = _flow(local="::ffff:10.0.0.1")
    flow.network_type = "ipv6"
    assert FlowBatch(flows=FlowBatch(flows=[flow]).flow_table()).flows[0].local.address == "::ffff:10.0.0.1"


def test_ipc_writes_each_string_column_with_only_the_values_it_uses() -> None:
    """k8s_attributes shares one big dictionary between its string columns; the queue must not write it per column."""
    shared = pa.array([""] + [f"pod-{i:05d}" for i in range(20_000)])
    table = FlowBatch(flows=[_flow() for _ in range(50)]).flow_table()
    codes = pa.array([7 * i + 1 for i in range(50)], pa.int32())
    columns = [
        pa.DictionaryArray.from_arrays(codes, shared) if pa.types.is_dictionary(f.type) else table.column(i)
        for i, f in enumerate(table.schema)
    ]
    table = pa.RecordBatch.from_arrays(columns, schema=table.schema)
    data = FlowBatch(flows=table, batch_id="b").to_ipc()
    back = FlowBatch.from_ipc(data)
    assert back.batch_id == "b"
    assert back.flow_table().to_pylist() == table.to_pylist()
    assert len(data) < 100_000  # every column with the 20,000 strings would be ~8 MB
