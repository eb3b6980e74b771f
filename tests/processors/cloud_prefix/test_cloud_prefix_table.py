"""Precedence between prefixes listed more than once, order independence, and the lookup itself."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from kubenetmon.processors.cloud_prefix.sources import RangeEntry, parse_aws, parse_azure, parse_gcp, parse_google
from kubenetmon.processors.cloud_prefix.table import Detail, build_table, merge_sources, resolve_source
from tests.processors.cloud_prefix.ranges import aws_doc, azure_doc, azure_group, gcp_doc, google_doc


def _winner(source: str, entries: list[RangeEntry], prefix: str) -> tuple[str, str]:
    """(service, region) that wins ``prefix``, asserted equal for every order of ``entries``."""
    outcomes = {
        (w.service, w.region)
        for order in itertools.permutations(entries)
        for w in [resolve_source(source, order)[prefix]]
    }
    assert len(outcomes) == 1, f"the winner depends on the order of the entries: {outcomes}"
    return outcomes.pop()


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        (["AMAZON", "EC2", "S3"], "s3"),  # S3 first
        (["EC2", "AMAZON"], "amazon"),  # then AMAZON over EC2, as the original's priorities say
        (["AMAZON", "ROUTE53_HEALTHCHECKS"], "route53_healthchecks"),  # a specific service beats AMAZON
        (["EC2", "DYNAMODB"], "dynamodb"),
        (["S3", "DYNAMODB", "EC2", "AMAZON"], "s3"),
        (["CLOUDFRONT", "API_GATEWAY"], "api_gateway"),  # a tie is decided by name, not by input order
    ],
)
def test_aws_service_priority_is_s3_then_specific_then_amazon_then_ec2(services: list[str], expected: str) -> None:
    entries = parse_aws(aws_doc(*[("52.216.0.0/15", s, "us-east-1") for s in services]))
    assert _winner("aws", entries, "52.216.0.0/15")[0] == expected


def test_aws_regional_entry_beats_global_for_the_same_service() -> None:
    entries = parse_aws(
        aws_doc(("2600:9000::/28", "CLOUDFRONT", "GLOBAL"), ("2600:9000::/28", "CLOUDFRONT", "us-east-1"))
    )
    assert _winner("aws", entries, "2600:9000::/28") == ("cloudfront", "us-east-1")


def _azure(*groups: dict[str, Any]) -> list[RangeEntry]:
    return parse_azure(azure_doc(*groups))


def test_azure_group_without_system_service_is_azurecloud_or_azureservice_by_name() -> None:
    entries = _azure(
        azure_group("AzureCloud.eastus", "", "eastus", "20.0.0.0/16"),
        azure_group("AzureFrontDoor.Frontend", "", "", "13.107.0.0/24"),
    )
    got = {e.prefix: (e.service, e.region, e.system_service) for e in entries}
    assert got == {"20.0.0.0/16": ("azurecloud", "eastus", False), "13.107.0.0/24": ("azureservice", "global", False)}


def test_azure_rule_b_a_system_service_beats_the_generic_tags() -> None:
    entries = _azure(
        azure_group("AzureCloud.eastus", "", "eastus", "20.1.0.0/24"),
        azure_group("AzureSQL.EastUS", "AzureSQL", "eastus", "20.1.0.0/24"),
        azure_group("AzureFrontDoor.Frontend", "", "", "20.1.0.0/24"),
    )
    assert _winner("azure", entries, "20.1.0.0/24") == ("azuresql", "eastus")


def test_azure_rule_c_storage_wins_with_the_real_spelling_azurestorage() -> None:
    # The original compared the raw "AzureStorage" with "azurestorage", so this rule never fired on live data.
    entries = _azure(
        azure_group("AzureSQL.EastUS", "AzureSQL", "eastus", "20.2.0.0/24"),
        azure_group("Storage", "AzureStorage", "", "20.2.0.0/24"),
        azure_group("AzureCloud.eastus", "", "eastus", "20.2.0.0/24"),
    )
    assert _winner("azure", entries, "20.2.0.0/24") == ("azurestorage", "global")


def test_azure_rule_d_regional_beats_global_for_the_same_service_and_storage_regional_beats_storage_global() -> None:
    entries = _azure(
        azure_group("Storage", "AzureStorage", "", "20.3.0.0/24"),
        azure_group("Storage.EastUS", "AzureStorage", "East US", "20.3.0.0/24"),
    )
    assert _winner("azure", entries, "20.3.0.0/24") == ("azurestorage", "eastus")
    entries = _azure(
        azure_group("AzureMonitor", "AzureMonitor", "", "2603:1030::/48"),
        azure_group("AzureMonitor.WestEurope", "AzureMonitor", "westeurope", "2603:1030::/48"),
    )
    assert _winner("azure", entries, "2603:1030::/48") == ("azuremonitor", "westeurope")


def test_gcp_duplicate_prefers_regional_then_name() -> None:
    entries = parse_gcp(gcp_doc(("34.1.0.0/20", "Google Cloud", "global"), ("34.1.0.0/20", "Google Cloud", "us-east1")))
    assert _winner("gcp", entries, "34.1.0.0/20") == ("googlecloud", "us-east1")


def test_google_goog_json_wins_an_identical_cloud_json_prefix_but_a_longer_cloud_json_prefix_still_matches() -> None:
    table = build_table({
        "gcp": parse_gcp(gcp_doc(("34.2.0.0/16", "Google Cloud", "europe-north1"),
                                 ("34.3.16.0/20", "Google Cloud", "us-east1"),
                                 ("2600:1900:4000::/44", "Google Cloud", "europe-north1"))),
        "google": parse_google(google_doc("34.2.0.0/16", "34.3.0.0/16", "2600:1900::/28")),
    })
    assert table.lookup("34.2.1.1") == Detail("gcp", "googleservice", "global")
    assert table.lookup("34.3.16.9") == Detail("gcp", "googlecloud", "us-east1")
    assert table.lookup("34.3.99.9") == Detail("gcp", "googleservice", "global")
    assert table.lookup("2600:1900:4000::5") == Detail("gcp", "googlecloud", "europe-north1")
    assert table.lookup("2600:1900:8000::5") == Detail("gcp", "googleservice", "global")


def test_cross_cloud_collisions_follow_the_original_source_order_whatever_the_mapping_order() -> None:
    sources = {
        "aws": parse_aws(aws_doc(("1.0.0.0/24", "AMAZON", "us-east-1"), ("1.0.1.0/24", "AMAZON", "us-east-1"),
                                 ("1.0.2.0/24", "AMAZON", "us-east-1"))),
        "gcp": parse_gcp(gcp_doc(("1.0.0.0/24", "Google Cloud", "us-east1"))),
        "azure": parse_azure(azure_doc(
            azure_group("AzureSQL", "AzureSQL", "", "1.0.1.0/24"),
            azure_group("Storage.EastUS", "AzureStorage", "eastus", "1.0.2.0/24"),
        )),
    }
    expected = {
        "1.0.0.0/24": Detail("gcp", "googlecloud", "us-east1"),  # GCP overwrites what came before
        "1.0.1.0/24": Detail("aws", "amazon", "us-east-1"),  # Azure keeps another cloud's prefix…
        "1.0.2.0/24": Detail("azure", "azurestorage", "eastus"),  # …unless it is storage (rule c)
    }
    for order in itertools.permutations(sources):
        resolved = {name: resolve_source(name, sources[name]) for name in order}
        assert merge_sources(resolved) == expected


def test_shuffled_documents_give_the_same_table() -> None:
    rng = random.Random(20250725)
    services = ["AMAZON", "EC2", "S3", "ROUTE53", "DYNAMODB", "CLOUDFRONT"]
    regions = ["us-east-1", "eu-west-1", "GLOBAL"]
    aws_entries = [(f"3.{i % 7}.0.0/16", rng.choice(services), rng.choice(regions)) for i in range(60)]
    aws_entries += [(f"2600:1f{i % 5:02x}::/32", rng.choice(services), rng.choice(regions)) for i in range(30)]
    az_services = [("AzureCloud.x", ""), ("AzureStorage", "AzureStorage"), ("AzureSQL", "AzureSQL"), ("Other", "")]
    az_groups = [
        azure_group(name + str(i), svc, rng.choice(["", "eastus", "westeurope"]), f"20.{i % 5}.0.0/16", "2603::/32")
        for i, (name, svc) in enumerate(rng.choice(az_services) for _ in range(40))
    ]
    reference: dict[str, Detail] | None = None
    for _ in range(20):
        rng.shuffle(aws_entries)
        rng.shuffle(az_groups)
        resolved = {
            "aws": resolve_source("aws", parse_aws(aws_doc(*aws_entries))),
            "azure": resolve_source("azure", parse_azure(azure_doc(*az_groups))),
        }
        merged = merge_sources(resolved)
        if reference is None:
            reference = merged
        assert merged == reference


def test_ipv4_address_never_matches_an_ipv6_prefix_with_the_same_leading_bits() -> None:
    # 38.0.31.5 is 0x26001f05: inside 2600:1f00::/24 bit for bit. One shared pytricia trie would match it.
    table = build_table({"aws": parse_aws(aws_doc(("2600:1f00::/24", "EC2", "us-east-1")))})
    assert table.lookup("38.0.31.5") is None
    assert table.lookup("2600:1f00::1") == Detail("aws", "ec2", "us-east-1")


def test_longest_prefix_wins_and_invalid_addresses_raise() -> None:
    table = build_table({"aws": parse_aws(aws_doc(("52.0.0.0/8", "AMAZON", "us-east-1"),
                                                  ("52.216.0.0/15", "S3", "us-east-1")))})
    assert table.lookup("52.216.3.4") == Detail("aws", "s3", "us-east-1")
    assert table.lookup("52.1.1.1") == Detail("aws", "amazon", "us-east-1")
    assert table.lookup_prefix("52.216.3.4") == "52.216.0.0/15"
    with pytest.raises(ValueError):
        table.lookup("not-an-address")
