"""Parsers of the providers' published IP-range documents.

Each parser takes the decoded JSON of one document and returns every
``(prefix, service, region)`` it lists, IPv4 and IPv6, normalised (lower
case, no spaces, as the original's ``NormalizeCloudString``) and with the
prefix in canonical text (host bits cleared). Duplicates are kept: deciding
between them is the job of :mod:`.table`, so that the decision does not
depend on the order of the document.

A document that does not have the expected shape raises
:class:`SourceFormatError` naming the first offending path, so that a
provider's error page or a format change never replaces a good table.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GLOBAL",
    "PARSERS",
    "SOURCE_CLOUD",
    "SOURCE_NAMES",
    "STANDARD_FILE_NAMES",
    "RangeEntry",
    "SourceFormatError",
    "canonical_prefix",
    "normalise",
    "parse_aws",
    "parse_azure",
    "parse_gcp",
    "parse_google",
    "parse_oracle",
    "parse_source",
]

GLOBAL = "global"

# Fixed order: the merge in .table walks the sources in this order.
SOURCE_NAMES: tuple[str, ...] = ("aws", "gcp", "google", "azure", "oracle")

SOURCE_CLOUD: dict[str, str] = {"aws": "aws", "gcp": "gcp", "google": "gcp", "azure": "azure", "oracle": "oracle"}

# The names `kubenetmon cloud-ranges fetch` writes and `files_dir`/`cache_dir` read.
STANDARD_FILE_NAMES: dict[str, str] = {
    "aws": "aws-ip-ranges.json",
    "gcp": "gcp-cloud.json",
    "google": "google-goog.json",
    "azure": "azure-servicetags-public.json",
    "oracle": "oracle-public-ip-ranges.json",
}

GOOGLE_SERVICE = "googleservice"
AZURE_CLOUD = "azurecloud"
AZURE_SERVICE = "azureservice"


class SourceFormatError(ValueError):
    """A range document does not have the provider's documented shape."""


@dataclass(frozen=True, slots=True)
class RangeEntry:
    """One prefix as one document lists it.

    ``system_service`` is Azure's: True when the entry's group names a
    ``systemService`` (a specific service rather than the generic
    ``AzureCloud`` tag); the precedence rules look at it.
    """

    prefix: str
    cloud: str
    service: str
    region: str
    system_service: bool = False


def normalise(text: str) -> str:
    """Lower case with every ASCII space removed (``Germany West Central`` → ``germanywestcentral``)."""
    return text.lower().replace(" ", "")


class _Prefixes:
    """Canonicalises prefix text, memoised: Azure lists the same prefix in many groups."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._seen: dict[str, str] = {}

    def __call__(self, text: Any, where: str) -> str:
        if not isinstance(text, str):
            raise SourceFormatError(f"{self._source}: {where} must be a string, got {type(text).__name__}")
        canonical = self._seen.get(text)
        if canonical is None:
            try:
                canonical = canonical_prefix(text)
            except ValueError:
                raise SourceFormatError(f"{self._source}: {where} is not an IP prefix: {text!r}") from None
            self._seen[text] = canonical
        return canonical


def canonical_prefix(text: str) -> str:
    """``2001:DB8::1/32`` → ``2001:db8::/32``; host bits are cleared (a prefix, not an address)."""
    return ipaddress.ip_network(text.strip(), strict=False).with_prefixlen


def _mapping(value: Any, source: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SourceFormatError(f"{source}: {where} must be an object, got {type(value).__name__}")
    return value


def _list(value: Any, source: str, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise SourceFormatError(f"{source}: {where} must be a list, got {type(value).__name__}")
    return value


def _string(item: dict[str, Any], key: str, source: str, where: str) -> str:
    value = item.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SourceFormatError(f"{source}: {where}.{key} must be a string, got {type(value).__name__}")
    return value


def _non_empty(entries: list[RangeEntry], source: str) -> list[RangeEntry]:
    # An empty document is a broken download, not a provider with no ranges.
    if not entries:
        raise SourceFormatError(f"{source}: the document lists no prefixes")
    return entries


def parse_aws(doc: Any) -> list[RangeEntry]:
    """AWS ``ip-ranges.json``: ``prefixes[].ip_prefix`` and ``ipv6_prefixes[].ipv6_prefix``."""
    doc = _mapping(doc, "aws", "the document")
    prefix = _Prefixes("aws")
    out: list[RangeEntry] = []
    for key, field in (("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")):
        if key not in doc and key == "ipv6_prefixes":
            continue  # older documents had no IPv6 list
        for i, raw in enumerate(_list(doc.get(key), "aws", key)):
            where = f"{key}[{i}]"
            item = _mapping(raw, "aws", where)
            out.append(
                RangeEntry(
                    prefix(item.get(field), f"{where}.{field}"),
                    "aws",
                    normalise(_string(item, "service", "aws", where)),
                    normalise(_string(item, "region", "aws", where)),
                )
            )
    return _non_empty(out, "aws")


def _google_prefixes(doc: Any, source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    doc = _mapping(doc, source, "the document")
    prefix = _Prefixes(source)
    for i, raw in enumerate(_list(doc.get("prefixes"), source, "prefixes")):
        where = f"prefixes[{i}]"
        item = _mapping(raw, source, where)
        for field in ("ipv4Prefix", "ipv6Prefix"):
            if item.get(field):
                yield prefix(item[field], f"{where}.{field}"), item


def parse_gcp(doc: Any) -> list[RangeEntry]:
    """GCP ``cloud.json``: ``prefixes[].{ipv4Prefix|ipv6Prefix, service, scope}``; scope is the region."""
    out = [
        RangeEntry(
            p,
            "gcp",
            normalise(_string(item, "service", "gcp", "prefixes[]")),
            normalise(_string(item, "scope", "gcp", "prefixes[]")),
        )
        for p, item in _google_prefixes(doc, "gcp")
    ]
    return _non_empty(out, "gcp")


def parse_google(doc: Any) -> list[RangeEntry]:
    """Google ``goog.json`` (all Google addresses, APIs included): ``googleservice`` in ``global``."""
    out = [RangeEntry(p, "gcp", GOOGLE_SERVICE, GLOBAL) for p, _ in _google_prefixes(doc, "google")]
    return _non_empty(out, "google")


def parse_azure(doc: Any) -> list[RangeEntry]:
    """Azure ``ServiceTags_Public_*.json``: ``values[].{name, properties.{region, systemService, addressPrefixes}}``.

    The service is the ``systemService``, else ``azurecloud`` for the
    ``AzureCloud*`` tags, else ``azureservice``; an empty region is ``global``.
    """
    doc = _mapping(doc, "azure", "the document")
    prefix = _Prefixes("azure")
    out: list[RangeEntry] = []
    for i, raw in enumerate(_list(doc.get("values"), "azure", "values")):
        where = f"values[{i}]"
        group = _mapping(raw, "azure", where)
        props = _mapping(group.get("properties"), "azure", f"{where}.properties")
        system_service = _string(props, "systemService", "azure", f"{where}.properties")
        if system_service:
            service = normalise(system_service)
        elif AZURE_CLOUD in _string(group, "name", "azure", where).lower():
            service = AZURE_CLOUD
        else:
            service = AZURE_SERVICE
        region = normalise(_string(props, "region", "azure", f"{where}.properties")) or GLOBAL
        prefixes = _list(props.get("addressPrefixes"), "azure", f"{where}.properties.addressPrefixes")
        for j, text in enumerate(prefixes):
            p = prefix(text, f"{where}.properties.addressPrefixes[{j}]")
            out.append(RangeEntry(p, "azure", service, region, bool(system_service)))
    return _non_empty(out, "azure")


def parse_oracle(doc: Any) -> list[RangeEntry]:
    """OCI ``public_ip_ranges.json``: ``regions[].{region, cidrs[].{cidr, tags[]}}``; the service is the first tag."""
    doc = _mapping(doc, "oracle", "the document")
    prefix = _Prefixes("oracle")
    out: list[RangeEntry] = []
    for i, raw in enumerate(_list(doc.get("regions"), "oracle", "regions")):
        where = f"regions[{i}]"
        region_item = _mapping(raw, "oracle", where)
        region = normalise(_string(region_item, "region", "oracle", where))
        for j, raw_cidr in enumerate(_list(region_item.get("cidrs"), "oracle", f"{where}.cidrs")):
            cw = f"{where}.cidrs[{j}]"
            cidr = _mapping(raw_cidr, "oracle", cw)
            tags = [t for t in _list(cidr.get("tags", []), "oracle", f"{cw}.tags") if isinstance(t, str)]
            service = normalise(sorted(tags)[0]) if tags else ""
            out.append(RangeEntry(prefix(cidr.get("cidr"), f"{cw}.cidr"), "oracle", service, region))
    return _non_empty(out, "oracle")


PARSERS: dict[str, Callable[[Any], list[RangeEntry]]] = {
    "aws": parse_aws,
    "gcp": parse_gcp,
    "google": parse_google,
    "azure": parse_azure,
    "oracle": parse_oracle,
}


def parse_source(source: str, doc: Any) -> list[RangeEntry]:
    """Parse the document of ``source`` (one of :data:`SOURCE_NAMES`)."""
    try:
        parser = PARSERS[source]
    except KeyError:
        raise ValueError(f"unknown range source {source!r}; known: {', '.join(SOURCE_NAMES)}") from None
    return parser(doc)
