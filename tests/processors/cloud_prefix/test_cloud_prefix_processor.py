"""Classification of flows by the processor: every class with IPv4 and IPv6, region check, readiness."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from kubenetmon.component import Kind
from kubenetmon.errors import BackpressureError, ConfigError
from kubenetmon.flows import Endpoint, Flow, FlowBatch
from kubenetmon.identity import Identity
from kubenetmon.processors.cloud_prefix import CloudPrefixConfig, CloudPrefixProcessor, factory
from kubenetmon.processors.cloud_prefix.sources import STANDARD_FILE_NAMES
from kubenetmon.testing import SinkConsumer, StaticHost, check_lifecycle, create_component, create_settings
from tests.processors.cloud_prefix.ranges import (
    RANGES_DIR,
    aws_doc,
    azure_doc,
    azure_group,
    gcp_doc,
    google_doc,
    real_file,
    write_json,
)

AWS_US_EAST_1 = Identity(cloud="aws", region="us-east-1", cluster="c1", environment="dev", cell="cell-a")


def _small_files(directory: Path) -> Path:
    write_json(directory / STANDARD_FILE_NAMES["aws"], aws_doc(
        ("52.216.0.0/15", "AMAZON", "us-east-1"),
        ("52.216.0.0/15", "S3", "us-east-1"),
        ("52.216.0.0/15", "EC2", "us-east-1"),
        ("2600:1f18::/33", "EC2", "us-east-1"),
        ("3.248.0.0/13", "EC2", "eu-west-1"),
        ("2a05:d018::/36", "EC2", "eu-west-1"),
        ("13.32.0.0/15", "CLOUDFRONT", "GLOBAL"),
        ("2600:9000::/28", "CLOUDFRONT", "GLOBAL"),
        ("15.230.0.0/24", "AMAZON", ""),
        ("2600:1ff0::/32", "AMAZON", ""),
    ))
    write_json(directory / STANDARD_FILE_NAMES["gcp"], gcp_doc(
        ("34.1.208.0/20", "Google Cloud", "us-east1"), ("2600:1900:4000::/44", "Google Cloud", "us-east1"),
    ))
    write_json(directory / STANDARD_FILE_NAMES["google"], google_doc("8.8.4.0/24", "2001:4860::/32"))
    write_json(directory / STANDARD_FILE_NAMES["azure"], azure_doc(
        azure_group("Storage.EastUS", "AzureStorage", "eastus", "20.38.98.0/24", "2603:1030:f:5::/64"),
    ))
    return directory


def _processor(
    tmp_path: Path, identity: Identity = AWS_US_EAST_1, files_dir: Path | None = None, **config: Any
) -> tuple[CloudPrefixProcessor, SinkConsumer]:
    cfg = CloudPrefixConfig(files_dir=str(files_dir or _small_files(tmp_path)), offline=True, **config)
    sink = SinkConsumer()
    proc = create_component(factory, cfg, consumer=sink, settings=create_settings(
        Kind.PROCESSOR, "cloud_prefix", identity=identity))
    return proc, sink


def _flow(remote: str, local: Endpoint | None = None, direction: str = "out") -> Flow:
    return Flow(direction, "tcp", "ipv6" if ":" in remote else "ipv4", local or Endpoint("10.0.0.5", 443),
                Endpoint(remote, 5555))


def _classify(proc: CloudPrefixProcessor, sink: SinkConsumer, address: str) -> Flow:
    proc.consume(FlowBatch(flows=[_flow(address)]))
    return sink.flows[-1]


CASES = [
    # address, class, remote cloud, region, service
    ("10.1.2.3", "INTRA_VPC", "aws", "us-east-1", ""),
    ("100.64.7.7", "INTRA_VPC", "aws", "us-east-1", ""),  # CGNAT, common for pod CIDRs
    ("172.20.0.1", "INTRA_VPC", "aws", "us-east-1", ""),
    ("169.254.169.254", "INTRA_VPC", "aws", "us-east-1", ""),
    ("fd12:3456::1", "INTRA_VPC", "aws", "us-east-1", ""),
    ("fe80::1", "INTRA_VPC", "aws", "us-east-1", ""),
    ("52.217.1.2", "INTRA_REGION", "aws", "us-east-1", "s3"),  # S3 prefix also listed as AMAZON and EC2
    ("2600:1f18:4000::9", "INTRA_REGION", "aws", "us-east-1", "ec2"),
    ("13.33.1.1", "INTRA_REGION", "aws", "global", "cloudfront"),
    ("2600:9000:1::1", "INTRA_REGION", "aws", "global", "cloudfront"),
    ("3.250.1.1", "INTER_REGION", "aws", "eu-west-1", "ec2"),
    ("2a05:d018:1::1", "INTER_REGION", "aws", "eu-west-1", "ec2"),
    ("34.1.210.1", "PUBLIC_INTERNET", "gcp", "us-east1", "googlecloud"),
    ("2600:1900:4001::1", "PUBLIC_INTERNET", "gcp", "us-east1", "googlecloud"),
    ("8.8.4.4", "PUBLIC_INTERNET", "gcp", "global", "googleservice"),
    ("20.38.98.7", "PUBLIC_INTERNET", "azure", "eastus", "azurestorage"),
    ("2603:1030:f:5::7", "PUBLIC_INTERNET", "azure", "eastus", "azurestorage"),
    ("198.51.100.1", "PUBLIC_INTERNET", "", "", ""),
    ("2001:db8:ffff::1", "PUBLIC_INTERNET", "", "", ""),
    ("15.230.0.9", "UNKNOWN", "aws", "", "amazon"),  # a local-cloud range with no region
    ("2600:1ff0::9", "UNKNOWN", "aws", "", "amazon"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_remote_address_is_classified(tmp_path: Path, case: tuple[str, str, str, str, str]) -> None:
    address, cls, cloud, region, service = case
    proc, sink = _processor(tmp_path)
    proc.start(StaticHost())
    try:
        flow = _classify(proc, sink, address)
    finally:
        proc.shutdown()
    assert (flow.connection_class, flow.remote.cloud, flow.remote.region, flow.remote.cloud_service) == (
        cls, cloud, region, service)


def test_unknown_is_counted_not_dropped(tmp_path: Path) -> None:
    proc, sink = _processor(tmp_path)
    proc.start(StaticHost())
    # An address the producer could not read is "not known" (null) in the columnar view ('' in a row).
    proc.consume(FlowBatch(flows=[_flow("15.230.0.9"), _flow("2600:1ff0::9"), _flow("")]))
    proc.shutdown()
    assert [f.connection_class for f in sink.flows] == ["UNKNOWN"] * 3
    assert proc._m_unknown.value(reason="no_region") == 2
    assert proc._m_unknown.value(reason="invalid_address") == 1
    assert proc._m_classes.value(connection_class="UNKNOWN") == 3


def test_vpc_cidrs_are_intra_vpc(tmp_path: Path) -> None:
    proc, sink = _processor(tmp_path, vpc_cidrs=("52.216.0.0/24", "2600:1f18:1::/48"))
    proc.start(StaticHost())
    got = [_classify(proc, sink, a).connection_class for a in ("52.216.0.9", "2600:1f18:1::9", "52.216.1.9")]
    proc.shutdown()
    assert got == ["INTRA_VPC", "INTRA_VPC", "INTRA_REGION"]


def test_private_space_is_decided_before_longer_cloud_prefixes_inside_it(tmp_path: Path) -> None:
    proc, sink = _processor(tmp_path, vpc_cidrs=("52.0.0.0/8", "2600:1f00::/24"))
    proc.start(StaticHost())
    got = [_classify(proc, sink, a).connection_class for a in ("52.217.1.2", "2600:1f18:4000::9", "53.0.0.1")]
    multicast = [_classify(proc, sink, a).connection_class for a in ("232.1.0.1", "232.0.0.5", "239.1.1.1")]
    proc.shutdown()
    assert got == ["INTRA_VPC", "INTRA_VPC", "PUBLIC_INTERNET"]
    assert multicast == ["INTRA_VPC", "PUBLIC_INTERNET", "INTRA_VPC"]  # the original's 232/8 minus 232.0.0.0/24


def test_twin_flows_share_one_classification_and_local_is_filled_from_identity(tmp_path: Path) -> None:
    proc, sink = _processor(tmp_path)
    proc.start(StaticHost())
    local = Endpoint("10.0.0.5", 443, pod="p", cloud="", region="", cluster="other-cluster")
    remote = Endpoint("3.250.1.1", 5555)
    out = Flow("out", "tcp", "ipv4", local, remote, bytes=10)
    back = Flow("in", "tcp", "ipv4", local, remote, bytes=20)
    proc.consume(FlowBatch(flows=[out, back]))
    proc.shutdown()
    out, back = sink.flows  # the processor hands on a new columnar flow view; read what it passed on
    local = out.local
    assert out.connection_class == back.connection_class == "INTER_REGION"
    assert proc._m_lookups.value(cache="miss") == 1  # one classification for the shared endpoint
    assert (local.cloud, local.region, local.cluster, local.cell) == ("aws", "us-east-1", "other-cluster", "cell-a")
    assert back.local == local


def test_repeated_addresses_come_from_the_cache(tmp_path: Path) -> None:
    proc, sink = _processor(tmp_path)
    proc.start(StaticHost())
    proc.consume(FlowBatch(flows=[_flow("3.250.1.1") for _ in range(5)]))
    proc.shutdown()
    assert (proc._m_lookups.value(cache="miss"), proc._m_lookups.value(cache="hit")) == (1, 4)
    assert {f.remote.region for f in sink.flows} == {"eu-west-1"}


def test_region_of_another_cloud_is_rejected_at_start_with_the_local_clouds_regions(tmp_path: Path) -> None:
    # us-east1 exists, but in GCP's data: the original accepted a region from any cloud.
    proc, _ = _processor(tmp_path, Identity(cloud="aws", region="us-east1"))
    with pytest.raises(ConfigError) as info:
        proc.start(StaticHost())
    message = str(info.value)
    assert "region 'us-east1' is not among the aws regions" in message
    assert "eu-west-1, us-east-1" in message and "skip_region_check" in message


def test_offline_without_any_usable_document_fails_at_start_saying_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc, _ = _processor(tmp_path, files_dir=tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"kubenetmon cloud-ranges fetch --out DIR"):
        proc.start(StaticHost())


def test_region_check_can_be_skipped(tmp_path: Path) -> None:
    proc, sink = _processor(tmp_path, Identity(cloud="aws", region="mars-1"), skip_region_check=True)
    proc.start(StaticHost())
    assert proc.is_ready()
    assert _classify(proc, sink, "52.217.1.2").connection_class == "INTER_REGION"
    proc.shutdown()


def test_identity_region_is_compared_normalised(tmp_path: Path) -> None:
    write_json(tmp_path / STANDARD_FILE_NAMES["azure"], azure_doc(
        azure_group("AzureCloud.germanywc", "", "Germany West Central", "20.52.0.0/16"),
    ))
    proc, sink = _processor(tmp_path, Identity(cloud="azure", region="Germany West Central"), files_dir=tmp_path)
    proc.start(StaticHost())
    flow = _classify(proc, sink, "20.52.1.1")
    proc.shutdown()
    assert (flow.connection_class, flow.remote.region) == ("INTRA_REGION", "germanywestcentral")


def test_without_a_table_batches_are_pushed_back_or_classified_private_only(tmp_path: Path) -> None:
    # Only a URL that answers 404 on loopback: start returns, no table, not ready.
    cfg: dict[str, Any] = {
        "sources": {name: {"url": "http://127.0.0.1:9/none.json"} for name in ("aws", "gcp", "google", "azure")},
        "fetch_retries": 0, "fetch_timeout": 1, "azure_landing_page": "", "azure_probe_days": 1,
    }
    for policy, expected in (("backpressure", None), ("private_only", ["INTRA_VPC", "UNKNOWN"])):
        sink = SinkConsumer()
        proc = create_component(factory, CloudPrefixConfig.model_validate({**cfg, "not_ready": policy}),
                                consumer=sink, settings=create_settings(Kind.PROCESSOR, "cloud_prefix",
                                                                        identity=AWS_US_EAST_1))
        proc.start(StaticHost())
        try:
            assert not proc.is_ready()
            batch = FlowBatch(flows=[_flow("10.0.0.9"), _flow("52.217.1.2")])
            if expected is None:
                with pytest.raises(BackpressureError):
                    proc.consume(batch)
                assert sink.batches == []
            else:
                proc.consume(batch)
                assert [f.connection_class for f in sink.flows] == expected
        finally:
            proc.shutdown()


def test_lifecycle_contract(tmp_path: Path) -> None:
    proc, _ = _processor(tmp_path)
    check_lifecycle(proc)
    assert proc.is_ready()
    unstarted, _ = _processor(tmp_path)
    unstarted.shutdown()
    unstarted.shutdown()


def test_real_files_s3_prefix_also_listed_as_amazon_is_s3(tmp_path: Path) -> None:
    doc = json.loads(real_file("aws-ip-ranges.json").read_text())
    by_prefix: dict[str, set[tuple[str, str]]] = {}
    for p in doc["prefixes"]:
        by_prefix.setdefault(p["ip_prefix"], set()).add((p["service"], p["region"]))
    nets = [ipaddress.ip_network(p) for p in by_prefix]
    chosen = None
    for prefix, listed in sorted(by_prefix.items()):
        if {s for s, _ in listed} >= {"S3", "AMAZON"}:
            net = ipaddress.ip_network(prefix)
            address = net[1]
            # The test's own longest match: no longer prefix in the file may hold the address.
            if max((n for n in nets if address in n), key=lambda n: n.prefixlen) == net:
                chosen = (str(address), {r for s, r in listed if s == "S3"}.pop())
                break
    assert chosen is not None, "the snapshot lists S3 prefixes that are also AMAZON"
    address, region = chosen
    proc, sink = _processor(tmp_path, Identity(cloud="aws", region=region), files_dir=RANGES_DIR)
    proc.start(StaticHost())
    flow = _classify(proc, sink, address)
    proc.shutdown()
    assert (flow.connection_class, flow.remote.cloud_service, flow.remote.region) == ("INTRA_REGION", "s3", region)
    assert proc._m_prefixes.value(cloud="azure", family="ipv6") > 0
