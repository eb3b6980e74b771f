"""Config of the ``cloud_prefix`` processor."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kubenetmon.component import ComponentConfig

__all__ = [
    "AZURE_LANDING_PAGE",
    "DEFAULT_URLS",
    "CloudPrefixConfig",
    "SourceConfig",
    "SourcesConfig",
]

DEFAULT_URLS: dict[str, str] = {
    "aws": "https://ip-ranges.amazonaws.com/ip-ranges.json",
    "gcp": "https://www.gstatic.com/ipranges/cloud.json",
    "google": "https://www.gstatic.com/ipranges/goog.json",
    # {date} (YYYYMMDD) is found from the landing page, else by a bounded concurrent probe.
    "azure": "https://download.microsoft.com/download/7/1/D/71D86715-5596-4529-9B13-DA13A5DE5B63/"
    "ServiceTags_Public_{date}.json",
    "oracle": "https://docs.oracle.com/iaas/tools/public_ip_ranges.json",
}
AZURE_LANDING_PAGE = "https://www.microsoft.com/en-us/download/details.aspx?id=56519"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """Where one provider's document comes from."""

    enabled: bool = Field(True, description="Load this provider's ranges.")
    url: str = Field(
        "",
        description="Where to download the document; empty: never download (air-gapped). For azure, "
        "'{date}' in the URL is replaced by the newest published YYYYMMDD.",
    )
    file: str = Field(
        "", description="A local copy to load at startup and on every refresh (read before the cache)."
    )


def _source(name: str, enabled: bool = True) -> SourceConfig:
    return SourceConfig(enabled=enabled, url=DEFAULT_URLS[name])


class SourcesConfig(_Strict):
    """The providers' documents. Omitted keys keep their defaults."""

    aws: SourceConfig = Field(default_factory=lambda: _source("aws"), description="AWS ip-ranges.json.")
    gcp: SourceConfig = Field(default_factory=lambda: _source("gcp"), description="GCP cloud.json.")
    google: SourceConfig = Field(
        default_factory=lambda: _source("google"),
        description="Google goog.json (Google APIs; classified as gcp/googleservice/global).",
    )
    azure: SourceConfig = Field(
        default_factory=lambda: _source("azure"), description="Azure ServiceTags_Public_*.json."
    )
    oracle: SourceConfig = Field(
        default_factory=lambda: _source("oracle", enabled=False),
        description="Oracle Cloud public_ip_ranges.json (off by default; not in the original).",
    )

    def items(self) -> list[tuple[str, SourceConfig]]:
        return [("aws", self.aws), ("gcp", self.gcp), ("google", self.google), ("azure", self.azure),
                ("oracle", self.oracle)]


class CloudPrefixConfig(ComponentConfig):
    """Classifies each flow's remote address by private space and cloud IP ranges."""

    sources: SourcesConfig = Field(default_factory=SourcesConfig, description="The range documents.")
    files_dir: str = Field(
        "",
        description="A directory of documents under the names `kubenetmon cloud-ranges fetch` writes "
        "(aws-ip-ranges.json, gcp-cloud.json, google-goog.json, azure-servicetags-public.json, "
        "oracle-public-ip-ranges.json); for air-gapped gateways.",
    )
    cache_dir: str = Field(
        "", description="Where the last good download of each document is kept and read at startup; empty: no cache."
    )
    offline: bool = Field(False, description="Never download; use files and cache only.")
    refresh_interval: float = Field(86400.0, gt=0, description="Seconds between refreshes (24 h).")
    fetch_timeout: float = Field(30.0, gt=0, description="Seconds allowed for one HTTP request.")
    fetch_retries: int = Field(2, ge=0, description="Retries of a failed download within one refresh.")
    retry_backoff: float = Field(2.0, ge=0, description="Seconds before the first retry; doubles each retry.")
    azure_landing_page: str = Field(
        AZURE_LANDING_PAGE,
        description="Page that links the current Azure file; empty: go straight to probing dates.",
    )
    azure_probe_days: int = Field(
        60, ge=1, le=366, description="How many days back to probe for the dated Azure file."
    )
    azure_probe_concurrency: int = Field(8, ge=1, le=64, description="Concurrent probe requests.")
    vpc_cidrs: tuple[str, ...] = Field(
        (), description="Extra CIDRs that are INTRA_VPC, besides RFC 1918, 100.64/10, link-local, loopback, ULA."
    )
    skip_region_check: bool = Field(
        False, description="Do not require service::identity::region to exist in the local cloud's ranges."
    )
    not_ready: Literal["backpressure", "private_only"] = Field(
        "backpressure",
        description="Before any table is loaded: backpressure refuses batches (the producer retries); "
        "private_only classifies private addresses and marks the rest UNKNOWN.",
    )
    cache_size: int = Field(
        200_000, ge=0,
        description="No effect since classification became columnar (each distinct address of a batch is "
        "looked up once, ~0.1 µs); kept so that existing configs stay valid.",
    )

    @field_validator("vpc_cidrs")
    @classmethod
    def _valid_cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, text in enumerate(value):
            try:
                ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                raise ValueError(f"vpc_cidrs[{i}]: {text!r} is not a CIDR ({exc})") from None
        return value

    @model_validator(mode="after")
    def _every_source_has_an_origin(self) -> CloudPrefixConfig:
        for name, source in self.sources.items():
            if source.enabled and not (source.url or source.file or self.files_dir or self.cache_dir):
                raise ValueError(
                    f"sources::{name} is enabled but has no url or file, and neither files_dir nor "
                    f"cache_dir is set; set one of them or set sources::{name}::enabled: false"
                )
        if self.offline and not (self.files_dir or self.cache_dir or any(
            s.file for _, s in self.sources.items() if s.enabled
        )):
            raise ValueError("offline is true but no file, files_dir or cache_dir is set: nothing to load")
        return self
