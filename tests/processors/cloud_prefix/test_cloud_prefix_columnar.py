"""The columnar classification (disjoint ranges + searchsorted) against the trie path, on the real files."""

from __future__ import annotations

import ipaddress
import logging
import random
from pathlib import Path

import pyarrow as pa
import pytest

from kubenetmon.component import Kind
from kubenetmon.flows import FlowBatch, flows_from_columns, pack_addresses, unpack_addresses
from kubenetmon.identity import Identity
from kubenetmon.processors.cloud_prefix import CloudPrefixConfig, CloudPrefixProcessor, factory
from kubenetmon.processors.cloud_prefix.config import SourceConfig, SourcesConfig
from kubenetmon.processors.cloud_prefix.fetch import RangeLoader
from kubenetmon.processors.cloud_prefix.processor import RemoteClassifier, fill_empty
from kubenetmon.processors.cloud_prefix.range_index import NO_MATCH, RangeIndex, address_keys, flatten
from kubenetmon.processors.cloud_prefix.table import PrefixTable
from kubenetmon.testing import SinkConsumer, StaticHost, create_component, create_settings
from tests.processors.cloud_prefix.ranges import RANGES_DIR, real_file

IDENTITY = Identity(cloud="aws", region="us-east-1", cluster="c1", cell="cell-a")


@pytest.fixture(scope="module")
def real_table() -> PrefixTable:
    for name in ("aws-ip-ranges.json", "azure-servicetags-public.json", "gcp-cloud.json"):
        real_file(name)
    config = CloudPrefixConfig(
        files_dir=str(RANGES_DIR), offline=True,
        sources=SourcesConfig(google=SourceConfig(enabled=False), oracle=SourceConfig(enabled=True)),
    )
    loader = RangeLoader(config, logging.getLogger("test"))
    loader.load_local()
    return loader.build()


def _addresses_around_every_prefix(table: PrefixTable, seed: int = 7) -> list[str]:
    """Each prefix's first and last address, one inside, and the neighbours just outside; plus random ones."""
    rnd = random.Random(seed)
    out: list[str] = []
    for prefix, _ in table.with_private(("10.0.0.0/8", "fc00::/7"), ()).entries():
        net = ipaddress.ip_network(prefix)
        top = (1 << net.max_prefixlen) - 1
        low, high = int(net.network_address), int(net.broadcast_address)
        candidates = [low, high, rnd.randint(low, high), low - 1, high + 1]
        make = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
        out += [str(make(c)) for c in candidates if 0 <= c <= top]
    out += [str(ipaddress.IPv4Address(rnd.getrandbits(32))) for _ in range(20_000)]
    out += [str(ipaddress.IPv6Address(rnd.getrandbits(128))) for _ in range(20_000)]
    # IPv6 neighbours of the IPv4-mapped block: an IPv4 address must never match an IPv6 prefix.
    out += ["::fffe:ffff:ffff", "::1:0:0:0", "::ffff:0:0", "::ffff:ffff:ffff", "2600:1f00::1"]
    return out


def test_columnar_classification_equals_the_trie_path_on_the_real_files(real_table: PrefixTable) -> None:
    classifier = RemoteClassifier(real_table, "aws", "us-east-1", ("52.94.0.0/22",))
    column = pack_addresses(_addresses_around_every_prefix(real_table))
    # The reference reads the address as the row view shows it: ``::ffff:a.b.c.d`` is the IPv4 address.
    addresses = unpack_addresses(column)
    assert len(addresses) > 300_000
    result = classifier.classify_column(column)
    columns = [c.to_pylist() for c in (result.connection_class, result.cloud, result.region, result.cloud_service)]
    mismatches = [
        (address, tuple(c[i] for c in columns), tuple(expected))
        for i, address in enumerate(addresses)
        if tuple(c[i] for c in columns) != tuple(expected := classifier.classify(address))
    ]
    assert mismatches == []
    assert sum(result.class_counts.values()) == len(addresses)
    assert set(result.class_counts) >= {"INTRA_VPC", "INTRA_REGION", "INTER_REGION", "PUBLIC_INTERNET"}


def test_flatten_keeps_the_most_specific_prefix_and_resumes_the_outer_one() -> None:
    # [0,100) a, inside it [10,20) b with [12,14) c inside; [20,30) d adjacent to b; [200,210) e alone.
    segments = flatten([(0, 100, 1), (10, 20, 2), (12, 14, 3), (20, 30, 4), (200, 210, 5)])
    assert segments == [(0, 1), (10, 2), (12, 3), (14, 2), (20, 4), (30, 1), (100, NO_MATCH), (200, 5),
                        (210, NO_MATCH)]


def test_ipv6_prefixes_longer_than_64_bits_are_matched_exactly() -> None:
    index = RangeIndex([("2001:db8::/32", "wide"), ("2001:db8::1:0/112", "narrow"), ("2001:db8::1:5/128", "one")])
    column = pack_addresses(["2001:db8::0:ffff", "2001:db8::1:0", "2001:db8::1:5", "2001:db8::1:6",
                             "2001:db8::2:0", "2001:db9::"])
    keys, valid = address_keys(column)
    assert valid is None
    assert [index.values[c] for c in index.codes(keys)] == ["wide", "narrow", "one", "narrow", "wide", None]


def test_fill_empty_replaces_only_empty_strings_and_keeps_the_dictionary_unique() -> None:
    column = pa.array(["", "aws", "", "gcp"]).dictionary_encode()
    assert fill_empty(column, "aws").to_pylist() == ["aws", "aws", "aws", "gcp"]
    assert fill_empty(column, "aws").dictionary.to_pylist() == ["", "aws", "gcp"]  # no second "aws"
    assert fill_empty(column, "azure").to_pylist() == ["azure", "aws", "azure", "gcp"]
    assert fill_empty(column, "") is column


def _processor(tmp_path: Path) -> tuple[CloudPrefixProcessor, SinkConsumer]:
    (tmp_path / "aws-ip-ranges.json").write_text(
        '{"prefixes": [{"ip_prefix": "52.216.0.0/15", "service": "S3", "region": "us-east-1"},'
        '{"ip_prefix": "3.248.0.0/13", "service": "EC2", "region": "eu-west-1"}],'
        '"ipv6_prefixes": [{"ipv6_prefix": "2600:1f18::/33", "service": "EC2", "region": "us-east-1"}]}'
    )
    config = CloudPrefixConfig(files_dir=str(tmp_path), offline=True, sources=SourcesConfig(
        gcp=SourceConfig(enabled=False), google=SourceConfig(enabled=False), azure=SourceConfig(enabled=False)))
    sink = SinkConsumer()
    proc: CloudPrefixProcessor = create_component(factory, config, consumer=sink, settings=create_settings(
        Kind.PROCESSOR, "cloud_prefix", identity=IDENTITY))
    proc.start(StaticHost())
    return proc, sink


def test_a_columnar_batch_stays_columnar_and_gets_new_columns(tmp_path: Path) -> None:
    proc, sink = _processor(tmp_path)
    try:
        table = flows_from_columns({
            "direction": ["out", "in", "out", "out"],
            "local_address": ["10.0.0.5"] * 4,
            "remote_address": ["52.217.1.2", "52.217.1.2", "2600:1f18::9", ""],
            "local_cloud": ["", "", "gcp", ""],
            "local_cluster": ["", "other", "", ""],
            "remote_region": ["stale", "", "", ""],
        })
        proc.consume(FlowBatch(flows=table, batch_id="b1"))
    finally:
        proc.shutdown()
    (out,) = sink.batches
    assert out.batch_id == "b1"
    assert out._flows.peek_table() is not None  # handed on as Arrow: no row objects were made
    got = out.flow_table()
    assert got.column("connection_class").to_pylist() == ["INTRA_REGION", "INTRA_REGION", "INTRA_REGION", "UNKNOWN"]
    assert got.column("remote_cloud_service").to_pylist() == ["s3", "s3", "ec2", ""]
    assert got.column("remote_region").to_pylist() == ["us-east-1", "us-east-1", "us-east-1", ""]
    assert got.column("local_cloud").to_pylist() == ["aws", "aws", "gcp", "aws"]
    assert got.column("local_cluster").to_pylist() == ["c1", "other", "c1", "c1"]
    assert got.column("local_cell").to_pylist() == ["cell-a"] * 4
    assert got.column("remote_address") == table.column("remote_address")  # untouched columns are shared
    assert (proc._m_lookups.value(cache="miss"), proc._m_lookups.value(cache="hit")) == (2, 1)
    assert proc._m_unknown.value(reason="invalid_address") == 1


def test_a_batch_without_flows_is_passed_on_unchanged(tmp_path: Path) -> None:
    proc, sink = _processor(tmp_path)
    try:
        batch = FlowBatch()
        proc.consume(batch)
    finally:
        proc.shutdown()
    assert sink.batches == [batch] and batch.num_flows == 0


def test_prefixes_that_reach_the_last_address_of_their_family() -> None:
    index = RangeIndex([("0.0.0.0/0", "all4"), ("255.255.255.255/32", "last4"), ("::/0", "all6"),
                        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "last6")])
    keys, _ = address_keys(pack_addresses(["255.255.255.255", "255.255.255.254", "0.0.0.0",
                                           "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::", "::1"]))
    assert [index.values[c] for c in index.codes(keys)] == ["last4", "all4", "all4", "last6", "all6", "all6"]
