"""``cloud_prefix`` processor: classifies remote addresses by private space and cloud IP ranges.

Also adds the ``kubenetmon cloud-ranges fetch --out DIR`` command, which
downloads the providers' documents (checked) for an air-gapped gateway's
``files_dir``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from kubenetmon.component import ProcessorFactory, Stability
from kubenetmon.hookspecs import hookimpl
from kubenetmon.processors.cloud_prefix.config import (
    AZURE_LANDING_PAGE,
    DEFAULT_URLS,
    CloudPrefixConfig,
    SourceConfig,
    SourcesConfig,
)
from kubenetmon.processors.cloud_prefix.fetch import RangeLoader
from kubenetmon.processors.cloud_prefix.processor import Classification, CloudPrefixProcessor, RemoteClassifier
from kubenetmon.processors.cloud_prefix.sources import SOURCE_NAMES, STANDARD_FILE_NAMES
from kubenetmon.processors.cloud_prefix.table import Detail, PrefixTable, build_table

__all__ = [
    "Classification",
    "CloudPrefixConfig",
    "CloudPrefixProcessor",
    "Detail",
    "PrefixTable",
    "RemoteClassifier",
    "build_table",
    "factory",
    "fetch_command",
]

factory: ProcessorFactory[CloudPrefixConfig] = ProcessorFactory(
    type="cloud_prefix",
    config_model=CloudPrefixConfig,
    description="Classifies each flow's remote address (INTRA_VPC, INTRA_REGION, INTER_REGION, "
    "PUBLIC_INTERNET) from private space and the AWS/GCP/Google/Azure(/Oracle) IP ranges.",
    stability=Stability.ALPHA,
    create=CloudPrefixProcessor,
)


@hookimpl
def kubenetmon_register_processors() -> list[ProcessorFactory[Any]]:
    return [factory]


_DEFAULT_FETCH = ("aws", "gcp", "google", "azure")


def fetch_command(args: argparse.Namespace) -> int:
    """``kubenetmon cloud-ranges fetch``: download, check and write each document; 1 if any failed."""
    wanted = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SOURCE_NAMES]
    urls = dict(DEFAULT_URLS)
    for item in args.url or []:
        name, sep, url = item.partition("=")
        if not sep or name not in SOURCE_NAMES:
            unknown.append(item)
        urls[name] = url
    if unknown:
        print(f"error: unknown source(s) {', '.join(unknown)}; known: {', '.join(SOURCE_NAMES)} "
              "(--url takes NAME=URL)", file=sys.stderr)
        return 2
    config = CloudPrefixConfig(
        sources=SourcesConfig(**{n: SourceConfig(enabled=n in wanted, url=urls[n]) for n in SOURCE_NAMES}),
        cache_dir=args.out,
        fetch_timeout=args.timeout,
        fetch_retries=args.retries,
        retry_backoff=1.0,
        azure_landing_page=args.azure_landing_page,
    )
    results: dict[str, str] = {}
    loader = RangeLoader(config, logging.getLogger("kubenetmon.cloud_ranges"), results.__setitem__)
    loader.refresh()
    failed = 0
    for name in wanted:
        result = results.get(name, "not attempted")
        if result == "success":
            print(f"{name}: wrote {args.out}/{STANDARD_FILE_NAMES[name]} ({loader.loaded()[name][4:]})")
        else:
            failed += 1
            print(f"{name}: FAILED ({result}); see the log above", file=sys.stderr)
    return 1 if failed else 0


@hookimpl
def kubenetmon_register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("cloud-ranges", help="cloud IP-range documents for the cloud_prefix processor")
    sub = parser.add_subparsers(dest="cloud_ranges_command", metavar="SUBCOMMAND", required=True)
    fetch = sub.add_parser(
        "fetch",
        help="download and check the providers' range documents into a directory "
        "(for files_dir on an air-gapped gateway)",
    )
    fetch.add_argument("--out", required=True, metavar="DIR", help="directory to write the documents to")
    fetch.add_argument(
        "--sources", default=",".join(_DEFAULT_FETCH),
        help=f"comma-separated sources (default {','.join(_DEFAULT_FETCH)}; known: {','.join(SOURCE_NAMES)})",
    )
    fetch.add_argument("--url", action="append", metavar="NAME=URL", help="override a source's URL (repeatable)")
    fetch.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request (default 60)")
    fetch.add_argument("--retries", type=int, default=2, help="retries per document (default 2)")
    fetch.add_argument(
        "--azure-landing-page", default=AZURE_LANDING_PAGE,
        help="page linking the current Azure file; empty to probe dates only",
    )
    fetch.set_defaults(func=fetch_command)
