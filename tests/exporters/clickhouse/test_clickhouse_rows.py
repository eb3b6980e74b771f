"""Flow → row mapping: buckets, validation, identity, IPv6, flags, pre-aggregation, round trips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from kubenetmon.exporters.clickhouse.connection import Connection
from kubenetmon.exporters.clickhouse.rows import COLUMN_NAMES, RowMapper
from kubenetmon.flows import Endpoint, Flow, FlowBatch
from kubenetmon.identity import Identity
from tests.exporters.clickhouse.clickhouse_testkit import IDENTITY, SECOND, T0_NS, make_flow, table_rows, wait_until

REPO = Path(__file__).resolve().parents[3]
T0 = datetime.fromtimestamp(T0_NS // SECOND, UTC)


def mapper(**kw: object) -> RowMapper:
    return RowMapper(IDENTITY, **kw)  # type: ignore[arg-type]


def test_bucket_is_the_utc_minute_holding_the_end_of_the_interval() -> None:
    flows = [
        make_flow(end_ns=T0_NS + 60 * SECOND),  # [11:59:55, 12:01:00) ends exactly on a boundary: 12:00
        make_flow(end_ns=T0_NS + 60 * SECOND + 1),  # one ns into 12:01
        make_flow(end_ns=T0_NS + 1),
    ]
    rows = mapper(aggregate=False).prepare(flows).to_rows()
    assert [r["intervalStartTime"] for r in rows] == [T0, T0.replace(minute=1), T0]
    assert all(r["intervalStartTime"].tzinfo is UTC for r in rows)
    assert [r["date"] for r in rows] == [T0.date()] * 3
    assert {r["intervalSeconds"] for r in rows} == {60}


def test_bucket_width_is_configurable_and_written_to_interval_seconds() -> None:
    rows = mapper(interval_seconds=300).prepare([make_flow(end_ns=T0_NS + 299 * SECOND)]).to_rows()
    assert rows[0]["intervalStartTime"] == T0
    assert rows[0]["intervalSeconds"] == 300


def test_utc_day_is_used_across_midnight() -> None:
    midnight = (T0_NS // (86400 * SECOND) + 1) * 86400 * SECOND
    rows = mapper().prepare([make_flow(end_ns=midnight + 5 * SECOND)]).to_rows()
    assert rows[0]["date"] == datetime.fromtimestamp(midnight // SECOND, UTC).date()


def test_invalid_direction_and_bad_values_reject_the_flow_not_the_block() -> None:
    flows = [
        make_flow("out"),
        make_flow("sideways"),
        make_flow("OUT"),
        make_flow("in", end_ns=0),
        make_flow("in", local=Endpoint(address="10.0.0.1", port=70000)),
        make_flow("in", nbytes=-1),
        make_flow("in", local=Endpoint(address="not-an-ip")),
    ]
    flows[3].start_ns = 0
    prepared = mapper().prepare(flows)
    assert prepared.rows == 1
    assert dict(prepared.rejected) == {
        "invalid_direction": 2, "no_timestamp": 1, "out_of_range": 2, "invalid_address": 1,
    }


def test_local_identity_comes_from_the_endpoint_then_the_configured_identity() -> None:
    own = Endpoint(address="10.0.0.1", cloud="gcp", region="europe-north1", cluster="other", cell="c1")
    rows = mapper(aggregate=False).prepare([make_flow(), make_flow(local=own)]).to_rows()
    assert [(r["localCloud"], r["localRegion"], r["localCluster"], r["localCell"]) for r in rows] == [
        ("aws", "us-west-2", "prod-1", "c7"),
        ("gcp", "europe-north1", "other", "c1"),
    ]
    assert {r["environment"] for r in rows} == {"production"}


def test_connection_flag_order_does_not_split_keys() -> None:
    flows = [
        make_flow(connection_flags={"NAT_GATEWAY": True, "CROSS_ACCOUNT": False}),
        make_flow(connection_flags={"CROSS_ACCOUNT": False, "NAT_GATEWAY": True}),
    ]
    prepared = mapper().prepare(flows)
    assert prepared.rows == 1
    flags = prepared.to_rows()[0]["connectionFlags"]
    assert list(flags) == ["CROSS_ACCOUNT", "NAT_GATEWAY"]


def test_ipv6_flows_are_written_with_unspecified_ipv4_or_dropped() -> None:
    v6 = make_flow(
        network_type="ipv6",
        local=Endpoint(address="fd00::1", port=443, pod="api-1"),
        remote=Endpoint(address="fd00::2", port=50000, pod="web-1"),
    )
    rows = mapper().prepare([v6]).to_rows()
    assert (rows[0]["localIPv4"], rows[0]["remoteIPv4"]) == (IPv4Address(0), IPv4Address(0))
    assert (rows[0]["localPod"], rows[0]["localPort"]) == ("api-1", 443)
    dropped = mapper(ipv6="drop").prepare([v6])
    assert dropped.rows == 0
    assert dropped.rejected["ipv6"] == 1


def test_aggregation_sums_equal_keys_and_can_be_turned_off() -> None:
    flows = [make_flow("out", nbytes=10, packets=1), make_flow("out", nbytes=5, packets=2), make_flow("in")]
    on = mapper().prepare(flows)
    assert (on.rows, on.flows, on.aggregated_away) == (2, 3, 1)
    assert [(r["direction"], r["bytes"], r["packets"]) for r in on.to_rows()] == [("out", 15, 3), ("in", 100, 1)]
    off = mapper(aggregate=False).prepare(flows)
    assert (off.rows, off.aggregated_away) == (3, 0)


def test_aggregation_matches_summing_row_by_row_over_many_keys() -> None:
    # 3,000 flows over ~600 keys that differ in one field or several (ports, addresses, pods, buckets,
    # flags), met in a shuffled order: one row per key, in the order each key is first met, with exact sums.
    import random

    rng = random.Random(7)
    flows = []
    for _ in range(3000):
        local = Endpoint(address=f"10.0.{rng.randrange(3)}.{rng.randrange(4)}", port=rng.choice((443, 8080)),
                         pod=rng.choice(("api-1", "api-2", "")), namespace="shop")
        remote = Endpoint(address=f"10.1.0.{rng.randrange(5)}", port=rng.choice((0, 41000, 65535)))
        flows.append(make_flow(rng.choice(("out", "in")), nbytes=rng.randrange(2**40), packets=rng.randrange(9),
                               end_ns=T0_NS + rng.choice((30, 90)) * SECOND, local=local, remote=remote,
                               connection_flags={"nat": True} if rng.random() < 0.1 else {}))
    rows = mapper().prepare(flows).to_rows()
    expected: dict[tuple[object, ...], list[int]] = {}
    for row in mapper(aggregate=False).prepare(flows).to_rows():
        key = tuple((k, str(v)) for k, v in row.items() if k not in ("bytes", "packets"))
        sums = expected.setdefault(key, [0, 0])
        sums[0] += row["bytes"]
        sums[1] += row["packets"]
    assert 300 < len(expected) < 3000
    got = [(tuple((k, str(v)) for k, v in r.items() if k not in ("bytes", "packets")), [r["bytes"], r["packets"]])
           for r in rows]
    assert got == list(expected.items())


def test_mapping_does_not_load_arrow_dataset_libraries() -> None:
    # Table.group_by would load pyarrow.acero, and with it pyarrow.dataset, Parquet and the cloud
    # filesystems: ~15 MB of RSS in every gateway for nothing it uses.
    code = (
        "import sys\n"
        "from tests.exporters.clickhouse.clickhouse_testkit import IDENTITY, make_flow\n"
        "from kubenetmon.exporters.clickhouse.rows import RowMapper\n"
        "RowMapper(IDENTITY).prepare([make_flow('out'), make_flow('out'), make_flow('in')])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('pyarrow.acero', 'pyarrow.dataset'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).parents[3]).stdout
    assert out.strip() == "[]"


def test_mapping_is_deterministic_so_retries_send_identical_blocks() -> None:
    flows = [make_flow(d, nbytes=i) for i in range(50) for d in ("out", "in")]
    assert mapper().prepare(flows).to_rows() == mapper().prepare(flows).to_rows()


def test_twelve_agent_intervals_of_one_connection_become_two_rows(db: Connection, make_exporter) -> None:  # type: ignore[no-untyped-def]
    exporter = make_exporter(batch={"max_wait": 60, "align": False})
    batches = [
        FlowBatch(flows=[
            make_flow("out", nbytes=1000 + i, packets=2, end_ns=T0_NS + (i + 1) * 5 * SECOND),
            make_flow("in", nbytes=20_000 + i, packets=3, end_ns=T0_NS + (i + 1) * 5 * SECOND),
        ])
        for i in range(12)  # 12 × 5 s = one minute: [12:00:00, 12:01:00)
    ]
    for b in batches:
        exporter.consume(b)
    exporter.shutdown(10)  # closes the open block: everything queued is flushed
    rows = table_rows(db)  # no FINAL: what was inserted
    assert [(r["direction"], r["bytes"], r["packets"], r["intervalStartTime"]) for r in rows] == [
        ("out", sum(1000 + i for i in range(12)), 24, T0.replace(tzinfo=None)),
        ("in", sum(20_000 + i for i in range(12)), 36, T0.replace(tzinfo=None)),
    ]
    assert exporter.m_aggregated.value() == 22
    assert exporter.m_rows.value() == 2


def test_every_column_type_round_trips(db: Connection, make_exporter) -> None:  # type: ignore[no-untyped-def]
    local = Endpoint(
        address="255.255.255.254", port=65535, pod="api-7f9c-x", namespace="shop", node="ip-10-0-0-1",
        app="api", instance_id="i-0abc", availability_zone="us-west-2a", cloud="aws", region="us-west-2",
        cluster="prod-1", cell="c7",
    )
    remote = Endpoint(
        address="52.218.0.1", port=0, pod="", namespace="", node="n2", app="", instance_id="i-0def",
        availability_zone="us-west-2b", cloud="aws", region="us-west-2", cluster="peer", cell="c9",
        cloud_service="S3",
    )
    flow = make_flow(
        "in", nbytes=2**64 - 1, packets=2**63, local=local, remote=remote, transport="udp",
        connection_class="INTRA_REGION", connection_flags={"NAT_GATEWAY": True, "AAA": False},
    )
    exporter = make_exporter()
    exporter.consume(FlowBatch(flows=[flow]))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    utc_rows = db.client.query(
        "SELECT *, toUnixTimestamp(intervalStartTime) AS epoch FROM default.network_flows_0"
    ).named_results()
    (row,) = list(utc_rows)
    expected = {
        "date": T0.date(), "intervalSeconds": 60, "environment": "production", "proto": "udp",
        "connectionClass": "INTRA_REGION", "connectionFlags": {"AAA": False, "NAT_GATEWAY": True},
        "direction": "in", "localCloud": "aws", "localRegion": "us-west-2", "localCluster": "prod-1",
        "localCell": "c7", "localAvailabilityZone": "us-west-2a", "localNode": "ip-10-0-0-1",
        "localInstanceID": "i-0abc", "localNamespace": "shop", "localPod": "api-7f9c-x",
        "localIPv4": IPv4Address("255.255.255.254"), "localPort": 65535, "localApp": "api",
        "remoteCloud": "aws", "remoteRegion": "us-west-2", "remoteCluster": "peer", "remoteCell": "c9",
        "remoteAvailabilityZone": "us-west-2b", "remoteNode": "n2", "remoteInstanceID": "i-0def",
        "remoteNamespace": "", "remotePod": "", "remoteIPv4": IPv4Address("52.218.0.1"), "remotePort": 0,
        "remoteApp": "", "remoteCloudService": "S3", "bytes": 2**64 - 1, "packets": 2**63,
        "epoch": T0_NS // SECOND,
    }
    assert {k: v for k, v in row.items() if k != "intervalStartTime"} == expected
    assert set(COLUMN_NAMES) <= set(row)


HOSTILE = [
    "it's",
    'say "hi"',
    "back\\slash\\",
    "\\'); DROP TABLE default.network_flows_0; --",
    "line\nbreak\r\n\ttab",
    "nul\x00byte",
    "ünïcødé ☃ 日本語 🚀",
    "{'A':true}",
    "x" * 10_240,
    "ü" * 5_000 + "'\\\"",
]


def test_hostile_strings_round_trip_exactly(db: Connection, make_exporter) -> None:  # type: ignore[no-untyped-def]
    flows = []
    for i, text in enumerate(HOSTILE):
        local = Endpoint(address="10.0.0.1", port=i, pod=text, namespace=text, app=text, node=text)
        remote = Endpoint(address="10.0.0.2", port=1, pod=text[::-1], app=text, cloud_service=text)
        flows.append(make_flow("out", nbytes=i + 1, local=local, remote=remote,
                               connection_flags={text: True}, connection_class=text))
    exporter = make_exporter()
    exporter.consume(FlowBatch(flows=flows))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    got = db.client.query(
        "SELECT localPort, localPod, localNamespace, localApp, localNode, remotePod, remoteApp, "
        "remoteCloudService, connectionFlags, connectionClass FROM default.network_flows_0 ORDER BY localPort"
    ).result_rows
    assert len(got) == len(HOSTILE)
    for (port, *values), text in zip(got, HOSTILE, strict=True):
        assert values == [text, text, text, text, text[::-1], text, text, {text: True}, text], f"string #{port}"
    assert db.client.command("EXISTS TABLE default.network_flows_0") == 1


_TZ_CHILD = """
import json, sys
from kubenetmon.component import Kind
from kubenetmon.exporters.clickhouse import ClickHouseConfig, ClickHouseExporter
from kubenetmon.flows import FlowBatch
from kubenetmon.testing import StaticHost, create_settings
from tests.exporters.clickhouse.clickhouse_testkit import IDENTITY, SECOND, T0_NS, make_flow
exporter = ClickHouseExporter(create_settings(Kind.EXPORTER, "clickhouse", identity=IDENTITY),
                              ClickHouseConfig(endpoint=sys.argv[1], batch={"max_wait": 0}))
exporter.start(StaticHost())
exporter.consume(FlowBatch(flows=[make_flow(end_ns=int(sys.argv[2]))]))
exporter.shutdown(10)
from kubenetmon.exporters.clickhouse.connection import connect
conn = connect(ClickHouseConfig(endpoint=sys.argv[1]))
row = conn.client.query("SELECT toUnixTimestamp(intervalStartTime), toString(date), "
                        "timezone() FROM default.network_flows_0").result_rows[0]
conn.close()
print(json.dumps(list(row)))
"""


def test_buckets_do_not_shift_when_the_process_is_not_on_utc(tmp_path: Path) -> None:
    # chDB's server time zone is the process's, so the engine must run in a child with TZ set.
    # 00:30:10 UTC is still the previous day in Los Angeles: both the bucket and the day must be UTC's.
    end_ns = T0_NS + (12 * 3600 + 30 * 60 + 10) * SECOND
    env = {**os.environ, "TZ": "America/Los_Angeles"}
    out = subprocess.run(
        [sys.executable, "-c", _TZ_CHILD, f"chdb://{tmp_path / 'chdb'}", str(end_ns)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    epoch, day, server_tz = json.loads(out.strip().splitlines()[-1])
    assert server_tz == "America/Los_Angeles"
    assert epoch == (end_ns // SECOND) // 60 * 60
    assert day == (T0.date() + timedelta(days=1)).isoformat()


def test_identity_defaults_are_empty_strings_not_none() -> None:
    rows = RowMapper(Identity()).prepare([make_flow()]).to_rows()
    assert (rows[0]["localCloud"], rows[0]["environment"]) == ("", "")



def varied_flows() -> list[Flow]:
    identity_less = Endpoint(address="10.9.9.9", port=1, pod="p")
    own = Endpoint(address="10.0.0.7", port=2, cloud="gcp", region="r", cluster="k", cell="c")
    v6 = Endpoint(address="fd00::9", port=3, pod="v6")
    combos = [(d, loc, flags) for d in ("out", "in") for loc in (identity_less, own, v6)
              for flags in ({}, {"B": True, "A": False})] * 3
    return [
        make_flow(d, nbytes=i * 7, packets=i, end_ns=T0_NS + i * 13 * SECOND, local=loc,
                  connection_flags=flags, network_type="ipv6" if loc is v6 else "ipv4")
        for i, (d, loc, flags) in enumerate(combos)
    ]


@pytest.mark.parametrize("aggregate", [False, True])
def test_column_path_gives_what_the_flow_by_flow_path_gives(aggregate: bool) -> None:
    # The columnar path (a flow table, what converted stages hand on) and the row-wise
    # helper (a list of Flow objects) must give the same rows.
    flows = varied_flows()
    by_column = mapper(aggregate=aggregate).prepare(FlowBatch(flows=flows).flow_table())
    by_flow = mapper(aggregate=aggregate).prepare(flows)
    assert by_column.to_rows() == by_flow.to_rows()
    assert (by_column.rows, by_column.flows, by_column.aggregated_away) == (
        by_flow.rows, by_flow.flows, by_flow.aggregated_away)


def test_a_flow_to_reject_is_rejected_alone_on_both_paths() -> None:
    flows = [*varied_flows(), make_flow("sideways")]
    for given in (flows, FlowBatch(flows=flows).flow_table()):
        prepared = mapper().prepare(given)
        assert prepared.rejected == {"invalid_direction": 1}
        assert prepared.flows == len(flows) - 1
    dropped = mapper(ipv6="drop").prepare(FlowBatch(flows=varied_flows()).flow_table())
    assert dropped.rejected == {"ipv6": sum(f.network_type == "ipv6" for f in varied_flows())}


def test_an_unparsable_address_is_rejected_in_every_block_not_only_the_first() -> None:
    m = mapper()
    for _ in range(3):
        prepared = m.prepare([make_flow(), make_flow(remote=Endpoint(address="10.0.0.300", port=1))])
        assert prepared.rejected == {"invalid_address": 1}
        assert prepared.rows == 1
