"""Fixtures of the end-to-end tests: a mini-cluster of namespaces, the public peer, its ranges file.

Every test here needs root (network namespaces, real conntrack); they skip
with that reason elsewhere and fail under CI (see tests/conftest.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubenetmon.demo.minicluster import MiniCluster, default_topology

#: Namespace-name prefix of everything these tests create.
PREFIX = "knme2e"

#: A real S3 prefix of eu-west-1 (from AWS's ip-ranges.json), so the cluster
#: (aws, us-west-2) sees it as another region's S3; and a documentation
#: address (TEST-NET-2) that no cloud lists: the public Internet.
S3_OTHER_REGION = "52.218.0.10"
S3_PREFIX = "52.218.0.0/17"
INTERNET_HOST = "198.51.100.10"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root: network namespaces and real conntrack tables")


def write_aws_ranges(directory: Path) -> Path:
    """A small file in AWS's ip-ranges.json format: the S3 prefix listed as AMAZON, EC2 and S3."""
    path = directory / "aws-ip-ranges.json"
    entries = [
        {"ip_prefix": S3_PREFIX, "region": "eu-west-1", "service": service, "network_border_group": "eu-west-1"}
        for service in ("AMAZON", "S3", "EC2")
    ]
    path.write_text(json.dumps({
        "syncToken": "1753388594", "createDate": "2025-07-24-20-23-14",
        "prefixes": entries, "ipv6_prefixes": [],
    }))
    return path


@pytest.fixture(scope="module")
def cluster() -> Iterator[MiniCluster]:
    """One mini-cluster per test module (faults that break it get their own)."""
    require_root()
    with MiniCluster(default_topology((S3_OTHER_REGION, INTERNET_HOST)), PREFIX) as mc:
        yield mc
