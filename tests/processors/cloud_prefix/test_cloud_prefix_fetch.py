"""Downloads against a loopback HTTP server: swaps, failures that keep the last good table, cache, Azure, CLI."""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from kubenetmon.component import Kind
from kubenetmon.flows import Endpoint, Flow, FlowBatch
from kubenetmon.identity import Identity
from kubenetmon.processors.cloud_prefix import (
    CloudPrefixConfig,
    CloudPrefixProcessor,
    factory,
    kubenetmon_register_commands,
)
from kubenetmon.processors.cloud_prefix.fetch import FetchError, discover_azure_url
from kubenetmon.processors.cloud_prefix.sources import STANDARD_FILE_NAMES
from kubenetmon.testing import SinkConsumer, StaticHost, create_component, create_settings
from tests.processors.cloud_prefix.ranges import (
    RangeServer,
    Route,
    aws_doc,
    azure_doc,
    azure_group,
    gcp_doc,
    google_doc,
)

IDENTITY = Identity(cloud="aws", region="us-east-1")


def _aws_v(region: str) -> dict[str, Any]:
    """A version of the AWS document: both test prefixes in ``region`` (us-east-1 is always listed)."""
    return aws_doc(("52.0.0.0/16", "EC2", region), ("2600:1f00::/32", "EC2", region), ("3.0.0.0/8", "EC2", "us-east-1"))


_FULL = json.dumps(_aws_v("eu-west-1")).encode()
_TRUNCATED = _FULL[: len(_FULL) // 2]


def _wait(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _aws_only(server: RangeServer, tmp_path: Path, **extra: Any) -> CloudPrefixConfig:
    return CloudPrefixConfig.model_validate({
        "sources": {"aws": {"url": server.url("/aws.json")}, "gcp": {"enabled": False},
                    "google": {"enabled": False}, "azure": {"enabled": False}},
        "cache_dir": str(tmp_path / "cache"),
        "fetch_timeout": 1.0, "fetch_retries": 0, "retry_backoff": 0.01,
        **extra,
    })


def _started(config: CloudPrefixConfig, sink: SinkConsumer | None = None) -> CloudPrefixProcessor:
    proc: CloudPrefixProcessor = create_component(
        factory, config, consumer=sink or SinkConsumer(),
        settings=create_settings(Kind.PROCESSOR, "cloud_prefix", identity=IDENTITY),
    )
    proc.start(StaticHost())
    return proc


def _region_of(proc: CloudPrefixProcessor, address: str) -> str:
    table = proc.table
    assert table is not None
    detail = table.lookup(address)
    return detail.region if detail else ""


def test_first_download_happens_in_the_background_and_makes_the_processor_ready(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.routes["/aws.json"] = Route(body=json.dumps(_aws_v("us-east-1")).encode(), delay=0.3)
    proc = _started(_aws_only(range_server, tmp_path))
    try:
        assert not proc.is_ready()  # start() did not wait for the download
        assert _wait(proc.is_ready)
        assert (tmp_path / "cache" / STANDARD_FILE_NAMES["aws"]).exists()
        assert proc._m_refreshes.value(source="aws", result="success") == 1
    finally:
        proc.shutdown()


def test_downloaded_table_without_the_local_region_is_reported_by_health(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.serve_json("/aws.json", _aws_v("eu-west-1"))
    proc: CloudPrefixProcessor = create_component(
        factory, _aws_only(range_server, tmp_path), consumer=SinkConsumer(),
        settings=create_settings(Kind.PROCESSOR, "cloud_prefix", identity=Identity(cloud="aws", region="mars-1")),
    )
    proc.start(StaticHost())
    try:
        assert _wait(lambda: proc.health() is not None)
        assert "region 'mars-1' is not among the aws regions" in str(proc.health())
        assert not proc.is_ready()
        assert proc._m_builds.value(result="rejected") >= 1
    finally:
        proc.shutdown()


def test_background_refresh_runs_every_interval_and_backs_off_after_a_failure(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.serve_json("/aws.json", _aws_v("us-east-1"))
    proc = _started(_aws_only(range_server, tmp_path, refresh_interval=1.0))
    try:
        assert _wait(proc.is_ready)
        range_server.serve_json("/aws.json", _aws_v("eu-west-1"))
        assert _wait(lambda: _region_of(proc, "52.0.1.1") == "eu-west-1")  # no refresh_now: the loop did it
        range_server.routes["/aws.json"] = Route(status=404)
        assert _wait(lambda: proc._m_refreshes.value(source="aws", result="http_error") >= 1)
        asked = len(range_server.requests)
        time.sleep(0.6)
        # A failed source is asked again after a backoff (here capped by refresh_interval), not in a loop.
        assert len(range_server.requests) == asked
        assert _region_of(proc, "52.0.1.1") == "eu-west-1"
    finally:
        proc.shutdown()


def test_good_refresh_swaps_the_table_atomically_under_concurrent_lookups(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.serve_json("/aws.json", _aws_v("us-east-1"))
    sink = SinkConsumer()
    proc = _started(_aws_only(range_server, tmp_path), sink)
    assert _wait(proc.is_ready)
    mixed: list[tuple[str, str]] = []
    stop = threading.Event()

    def classify_continuously() -> None:
        while not stop.is_set():
            flows = [Flow("out", "tcp", "ipv4", Endpoint("10.0.0.1"), Endpoint("52.0.1.1")),
                     Flow("out", "tcp", "ipv6", Endpoint("fd00::1"), Endpoint("2600:1f00::1"))]
            proc.consume(FlowBatch(flows=flows))
            regions = (flows[0].remote.region, flows[1].remote.region)
            if regions[0] != regions[1]:
                mixed.append(regions)

    workers = [threading.Thread(target=classify_continuously) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        tables = set()
        for i in range(6):
            range_server.serve_json("/aws.json", _aws_v("eu-west-1" if i % 2 == 0 else "us-east-1"))
            before = proc.table
            assert proc.refresh_now()
            assert proc.table is not before
            tables.add(id(proc.table))
            assert _region_of(proc, "52.0.1.1") == ("eu-west-1" if i % 2 == 0 else "us-east-1")
    finally:
        stop.set()
        for w in workers:
            w.join()
        proc.shutdown()
    assert not mixed, f"a batch saw two tables at once: {mixed[:3]}"
    assert proc._m_builds.value(result="swapped") == 7
    assert {f.remote.region for f in sink.flows} == {"us-east-1", "eu-west-1"}


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        (Route(status=404, body=b"<html>not found</html>"), "http_error"),
        (Route(status=500, body=b'{"prefixes": []}'), "http_error"),
        (Route(body=json.dumps(_aws_v("eu-west-1")).encode(), delay=2.5), "timeout"),
        (Route(body=_TRUNCATED), "invalid_json"),
        (Route(body=b'{"syncToken": "1", "prefixes": {"not": "a list"}}'), "invalid_schema"),
        (Route(body=b'{"prefixes": [{"ip_prefix": "52.0.0.0/99", "service": "EC2", "region": "x"}]}'),
         "invalid_schema"),
    ],
)
def test_failed_refresh_keeps_the_last_good_table_and_is_counted(
    range_server: RangeServer, tmp_path: Path, route: Route, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    range_server.serve_json("/aws.json", _aws_v("us-east-1"))
    proc = _started(_aws_only(range_server, tmp_path))
    try:
        assert _wait(proc.is_ready)
        good = proc.table
        cached = (tmp_path / "cache" / STANDARD_FILE_NAMES["aws"]).read_bytes()
        range_server.routes["/aws.json"] = route
        with caplog.at_level(logging.ERROR):
            assert not proc.refresh_now()
        assert proc.table is good
        assert _region_of(proc, "52.0.1.1") == "us-east-1"
        assert proc._m_refreshes.value(source="aws", result=reason) == 1
        assert (tmp_path / "cache" / STANDARD_FILE_NAMES["aws"]).read_bytes() == cached  # cache untouched
        assert any("keeping the last good ranges" in r.getMessage() for r in caplog.records)
    finally:
        proc.shutdown()


def test_retries_after_a_transient_failure_within_one_refresh(range_server: RangeServer, tmp_path: Path) -> None:
    range_server.serve_json("/aws.json", _aws_v("us-east-1"))
    proc = _started(_aws_only(range_server, tmp_path, fetch_retries=2))
    try:
        assert _wait(proc.is_ready)
        range_server.routes["/aws.json"] = Route(status=503)
        threading.Timer(0.005, lambda: range_server.serve_json("/aws.json", _aws_v("eu-west-1"))).start()
        assert proc.refresh_now()
        assert _region_of(proc, "52.0.1.1") == "eu-west-1"
    finally:
        proc.shutdown()


def test_startup_without_network_uses_the_cache_of_the_last_good_download(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.serve_json("/aws.json", _aws_v("eu-west-1"))
    first = _started(_aws_only(range_server, tmp_path))
    assert _wait(first.is_ready)
    first.shutdown()
    range_server.routes.clear()  # now every download fails
    second = _started(_aws_only(range_server, tmp_path))
    try:
        assert second.is_ready()  # ready in start(), from the cache
        assert _region_of(second, "2600:1f00::1") == "eu-west-1"
        assert not second.refresh_now()
        assert second._m_refreshes.value(source="aws", result="loaded") == 1
        assert second._m_refreshes.value(source="aws", result="http_error") >= 1
    finally:
        second.shutdown()


def test_fresh_cache_is_not_downloaded_again_at_startup(range_server: RangeServer, tmp_path: Path) -> None:
    range_server.serve_json("/aws.json", _aws_v("us-east-1"))
    first = _started(_aws_only(range_server, tmp_path))
    assert _wait(first.is_ready)
    first.shutdown()
    asked = len(range_server.requests)
    second = _started(_aws_only(range_server, tmp_path))
    try:
        assert second.is_ready()
        time.sleep(0.5)
        assert len(range_server.requests) == asked  # due in refresh_interval (24 h), counted from the cache file
    finally:
        second.shutdown()


def test_corrupt_cache_is_ignored_and_counted(range_server: RangeServer, tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / STANDARD_FILE_NAMES["aws"]).write_text('{"prefixes": [')
    range_server.serve_json("/aws.json", _aws_v("us-east-1"))
    proc = _started(_aws_only(range_server, tmp_path))
    try:
        assert proc._m_refreshes.value(source="aws", result="invalid_json") == 1
        assert _wait(proc.is_ready)  # the download replaces it
    finally:
        proc.shutdown()


def test_azure_file_is_found_by_a_bounded_concurrent_probe(range_server: RangeServer) -> None:
    today = date(2025, 7, 25)
    published = (today - timedelta(days=9)).strftime("%Y%m%d")
    range_server.serve_json(f"/ServiceTags_Public_{published}.json", azure_doc())
    url = discover_azure_url(
        range_server.url("/ServiceTags_Public_{date}.json"), landing_page="", timeout=2, days=30, concurrency=4,
        today=today,
    )
    assert url.endswith(f"ServiceTags_Public_{published}.json")
    probes = [p for _, p in range_server.requests]
    assert len(probes) <= 12  # three waves of four, not one request per day back to the hit
    with pytest.raises(FetchError, match=r"no .* found for the last 5 days"):
        discover_azure_url(range_server.url("/ServiceTags_Public_{date}.json"), landing_page="", timeout=2,
                           days=5, concurrency=4, today=today)


def test_azure_file_is_taken_from_the_landing_page_when_it_links_one(range_server: RangeServer) -> None:
    links = "".join(
        f'<a href="{range_server.url(f"/dl/ServiceTags_Public_{d}.json")}">x</a>' for d in ("20250714", "20250721")
    )
    range_server.routes["/landing"] = Route(body=f"<html>{links}</html>".encode())
    url = discover_azure_url("http://127.0.0.1:9/ServiceTags_Public_{date}.json", landing_page=range_server.url(
        "/landing"), timeout=2, days=30, concurrency=4)
    assert url == range_server.url("/dl/ServiceTags_Public_20250721.json")
    assert [p for _, p in range_server.requests] == ["/landing"]


def test_fetch_command_writes_checked_documents_that_an_air_gapped_gateway_loads(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.serve_json("/aws.json", _aws_v("us-east-1"))
    range_server.serve_json("/cloud.json", gcp_doc(("34.1.208.0/20", "Google Cloud", "us-east1")))
    range_server.serve_json("/goog.json", google_doc("8.8.4.0/24"))
    range_server.serve_json("/dl/ServiceTags_Public_20250721.json",
                            azure_doc(azure_group("Storage", "AzureStorage", "", "20.38.98.0/24")))
    range_server.routes["/landing"] = Route(
        body=f'<a href="{range_server.url("/dl/ServiceTags_Public_20250721.json")}">'.encode())
    out = tmp_path / "ranges"
    parser = argparse.ArgumentParser()
    kubenetmon_register_commands(parser.add_subparsers())
    args = parser.parse_args([
        "cloud-ranges", "fetch", "--out", str(out), "--timeout", "2",
        "--url", f"aws={range_server.url('/aws.json')}", "--url", f"gcp={range_server.url('/cloud.json')}",
        "--url", f"google={range_server.url('/goog.json')}",
        "--url", f"azure={range_server.url('/ServiceTags_Public_{date}.json')}",
        "--azure-landing-page", range_server.url("/landing"),
    ])
    assert args.func(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(STANDARD_FILE_NAMES[s] for s in
                                                          ("aws", "gcp", "google", "azure"))
    offline = CloudPrefixConfig(files_dir=str(out), offline=True)
    proc = _started(offline)
    try:
        assert proc.is_ready()
        assert proc.table is not None and proc.table.lookup("20.38.98.1") is not None
    finally:
        proc.shutdown()

    range_server.routes["/aws.json"] = Route(status=404)
    args = parser.parse_args(["cloud-ranges", "fetch", "--out", str(tmp_path / "x"), "--sources", "aws",
                              "--retries", "0", "--url", f"aws={range_server.url('/aws.json')}"])
    assert args.func(args) == 1
    assert not (tmp_path / "x" / STANDARD_FILE_NAMES["aws"]).exists()


_DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
_HUGE_NUMBER = b'{"syncToken": ' + b"9" * 5000 + b', "prefixes": []}'


@pytest.mark.parametrize(("body", "said"), [(_DEEP_JSON, "nested thousands of levels deep"),
                                            (_HUGE_NUMBER, "a number of 5000 digits")])
def test_hostile_range_file_is_counted_and_the_last_good_table_kept(
    tmp_path: Path, body: bytes, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 16 item 13: these were logged as a crash of the refresh, never counted in refreshes_total.
    path = tmp_path / STANDARD_FILE_NAMES["aws"]
    path.write_text(json.dumps(_aws_v("us-east-1")))
    config = CloudPrefixConfig.model_validate({
        "sources": {"aws": {"file": str(path)}, "gcp": {"enabled": False}, "google": {"enabled": False},
                    "azure": {"enabled": False}},
        "offline": True,
    })
    proc = _started(config)
    try:
        good = proc.table
        assert good is not None
        path.write_bytes(body)
        os.utime(path, (time.time() + 5, time.time() + 5))  # a changed file is re-read
        with caplog.at_level(logging.ERROR):
            assert not proc.refresh_now()
        assert proc.table is good
        assert _region_of(proc, "52.0.1.1") == "us-east-1"
        assert proc._m_refreshes.value(source="aws", result="invalid_json") == 1
        assert any(str(path) in r.getMessage() and said in r.getMessage() for r in caplog.records)
    finally:
        proc.shutdown()


def test_hostile_download_is_counted_and_the_cache_kept(range_server: RangeServer, tmp_path: Path) -> None:
    range_server.serve_json("/aws.json", _aws_v("us-east-1"))
    proc = _started(_aws_only(range_server, tmp_path))
    try:
        assert _wait(proc.is_ready)
        good = proc.table
        cached = (tmp_path / "cache" / STANDARD_FILE_NAMES["aws"]).read_bytes()
        for body in (_DEEP_JSON, _HUGE_NUMBER):
            range_server.routes["/aws.json"] = Route(body=body)
            assert not proc.refresh_now()
        assert proc.table is good
        assert proc._m_refreshes.value(source="aws", result="invalid_json") == 2
        assert (tmp_path / "cache" / STANDARD_FILE_NAMES["aws"]).read_bytes() == cached
    finally:
        proc.shutdown()
