"""Parsers on the real provider files (expectations computed here from the raw JSON) and on bad input."""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from typing import Any

import pytest

from kubenetmon.processors.cloud_prefix.sources import (
    SourceFormatError,
    parse_aws,
    parse_azure,
    parse_gcp,
    parse_google,
    parse_oracle,
)
from kubenetmon.processors.cloud_prefix.table import build_table
from tests.processors.cloud_prefix.ranges import real_file


def _load(name: str) -> Any:
    return json.loads(real_file(name).read_text())


def _family(prefix: str) -> str:
    return f"ipv{ipaddress.ip_network(prefix, strict=False).version}"


def _norm(text: str) -> str:
    return text.lower().replace(" ", "")


def _parsed_counts(entries: list[Any]) -> Counter[tuple[str, str, str]]:
    return Counter((e.service, e.region, _family(e.prefix)) for e in entries)


def test_aws_parser_keeps_every_ipv4_and_ipv6_prefix_by_service_and_region() -> None:
    doc = _load("aws-ip-ranges.json")
    expected = Counter(
        (_norm(p["service"]), _norm(p["region"]), _family(p["ip_prefix"])) for p in doc["prefixes"]
    ) + Counter((_norm(p["service"]), _norm(p["region"]), _family(p["ipv6_prefix"])) for p in doc["ipv6_prefixes"])
    entries = parse_aws(doc)
    assert _parsed_counts(entries) == expected
    assert {e.cloud for e in entries} == {"aws"}
    families = Counter(_family(e.prefix) for e in entries)
    assert families["ipv4"] == len(doc["prefixes"]) and families["ipv6"] == len(doc["ipv6_prefixes"])


def test_gcp_parser_uses_scope_as_region_for_both_families() -> None:
    doc = _load("gcp-cloud.json")
    expected: Counter[tuple[str, str, str]] = Counter()
    for p in doc["prefixes"]:
        for key in ("ipv4Prefix", "ipv6Prefix"):
            if key in p:
                expected[(_norm(p["service"]), _norm(p["scope"]), _family(p[key]))] += 1
    entries = parse_gcp(doc)
    assert _parsed_counts(entries) == expected
    assert ("googlecloud", "africa-south1", "ipv4") in expected  # "Google Cloud" normalised


def test_azure_parser_derives_service_and_region_like_the_original() -> None:
    doc = _load("azure-servicetags-public.json")
    expected: Counter[tuple[str, str, str]] = Counter()
    for group in doc["values"]:
        props = group["properties"]
        if props["systemService"]:
            service = _norm(props["systemService"])
        else:
            service = "azurecloud" if "azurecloud" in group["name"].lower() else "azureservice"
        region = _norm(props["region"]) or "global"
        for p in props["addressPrefixes"]:
            expected[(service, region, _family(p))] += 1
    entries = parse_azure(doc)
    assert _parsed_counts(entries) == expected
    assert sum(1 for e in entries if ":" in e.prefix) == sum(
        1 for g in doc["values"] for p in g["properties"]["addressPrefixes"] if ":" in p
    )
    assert any(e.service == "azurestorage" for e in entries)


def test_oracle_parser_reads_every_region() -> None:
    doc = _load("oracle-public-ip-ranges.json")
    expected = Counter((_norm(r["region"]), _family(c["cidr"])) for r in doc["regions"] for c in r["cidrs"])
    assert Counter((e.region, _family(e.prefix)) for e in parse_oracle(doc)) == expected


def test_table_of_all_real_files_holds_every_distinct_prefix_per_cloud_and_family() -> None:
    docs = {
        "aws": _load("aws-ip-ranges.json"),
        "gcp": _load("gcp-cloud.json"),
        "azure": _load("azure-servicetags-public.json"),
        "oracle": _load("oracle-public-ip-ranges.json"),
    }
    raw: dict[str, list[str]] = {
        "aws": [p["ip_prefix"] for p in docs["aws"]["prefixes"]]
        + [p["ipv6_prefix"] for p in docs["aws"]["ipv6_prefixes"]],
        "gcp": [p.get("ipv4Prefix") or p["ipv6Prefix"] for p in docs["gcp"]["prefixes"]],
        "azure": [p for g in docs["azure"]["values"] for p in g["properties"]["addressPrefixes"]],
        "oracle": [c["cidr"] for r in docs["oracle"]["regions"] for c in r["cidrs"]],
    }
    distinct = {cloud: {ipaddress.ip_network(p, strict=False) for p in ps} for cloud, ps in raw.items()}
    clouds = list(distinct)
    overlaps = [(a, b) for i, a in enumerate(clouds) for b in clouds[i + 1 :] if distinct[a] & distinct[b]]
    assert not overlaps, "these snapshots share no identical prefix across clouds; the counts below rely on it"

    table = build_table({
        "aws": parse_aws(docs["aws"]),
        "gcp": parse_gcp(docs["gcp"]),
        "azure": parse_azure(docs["azure"]),
        "oracle": parse_oracle(docs["oracle"]),
    })
    expected = Counter((cloud, f"ipv{n.version}") for cloud, nets in distinct.items() for n in nets)
    assert table.counts() == dict(expected)
    assert len(table) == sum(expected.values())
    assert "us-east-1" in table.regions("aws") and "westeurope" in table.regions("azure")


@pytest.mark.parametrize(
    ("parser", "doc", "message"),
    [
        (parse_aws, {"prefixes": "x"}, "aws: prefixes must be a list"),
        (parse_aws, {"prefixes": [{"ip_prefix": "10.0.0.0/33", "service": "S3", "region": "x"}]},
         "aws: prefixes[0].ip_prefix is not an IP prefix: '10.0.0.0/33'"),
        (parse_aws, {"prefixes": [{"ip_prefix": 7}]}, "aws: prefixes[0].ip_prefix must be a string"),
        (parse_aws, {"prefixes": [], "ipv6_prefixes": []}, "aws: the document lists no prefixes"),
        (parse_aws, ["not", "an", "object"], "aws: the document must be an object"),
        (parse_gcp, {"syncToken": "1"}, "gcp: prefixes must be a list"),
        (parse_google, {"prefixes": [{"ipv4Prefix": "aaaaa"}]}, "google: prefixes[0].ipv4Prefix is not an IP prefix"),
        (parse_azure, {"values": [{"name": "x"}]}, "azure: values[0].properties must be an object"),
        (parse_azure, {"values": [{"name": "x", "properties": {"addressPrefixes": ["invalid-ip"]}}]},
         "azure: values[0].properties.addressPrefixes[0] is not an IP prefix"),
        (parse_oracle, {"regions": [{"region": "r", "cidrs": [{"cidr": None}]}]}, "oracle: regions[0].cidrs[0].cidr"),
    ],
)
def test_malformed_documents_are_rejected_with_the_offending_path(parser: Any, doc: Any, message: str) -> None:
    with pytest.raises(SourceFormatError) as info:
        parser(doc)
    assert message in str(info.value)


def test_prefixes_are_canonicalised_and_host_bits_cleared() -> None:
    entries = parse_google({"prefixes": [{"ipv4Prefix": "8.8.4.4/24"}, {"ipv6Prefix": "2001:DB8:0::1/32"}]})
    assert [e.prefix for e in entries] == ["8.8.4.0/24", "2001:db8::/32"]
    assert {(e.cloud, e.service, e.region) for e in entries} == {("gcp", "googleservice", "global")}
