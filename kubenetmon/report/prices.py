"""The price table: USD per GB of data transfer, per cloud and billed class.

The default table is ``kubenetmon/report/prices/default.yaml`` (its sources and
the date they were read are in the file, and shown with every cost answer).
A user's file overrides it key by key (``--prices FILE``; the file is either a
price table or a report config with a ``prices:`` section), so a one-line file
such as ``cross_zone_per_gb: 0.015`` or ``discount: 0.2`` is enough.

:meth:`PriceTable.rates` flattens the table into USD **per byte** keyed
``<cloud>/<billed class>`` (``aws/inter_zone``,
``aws/inter_region/us-east-1>us-east-2``, ...), with discounts applied and
per-direction inter-zone prices added up: that map is the one query parameter
the cost SQL (:mod:`kubenetmon.report.cost`) needs, so prices never reach the
SQL text.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["BILLED_CLASSES", "DEFAULT_PRICES", "CloudPrices", "PriceTable", "load_prices"]

DEFAULT_PRICES = Path(__file__).with_name("prices") / "default.yaml"

# The classes the cost SQL puts every row in (see kubenetmon.report.cost).
BILLED_CLASSES = (
    "inter_zone", "same_zone", "vpc_unknown_zone", "inter_region", "internet", "cloud_service", "unknown",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InterZone(_Strict):
    """Per GB crossing zones, for each side the provider charges."""

    out: float = Field(ge=0, description="Charged to the sender's zone, per GB.")
    in_: float = Field(0.0, ge=0, alias="in", description="Charged to the receiver's zone for the same GB.")


class InterRegion(_Strict):
    default: float = Field(ge=0, description="Per GB sent to another region of the same cloud.")
    pairs: dict[str, float] = Field(
        default_factory=dict, description="Per GB for one '<from-region>><to-region>' pair, where it differs."
    )

    @model_validator(mode="after")
    def _pairs_are_pairs(self) -> InterRegion:
        for key, price in self.pairs.items():
            if key.count(">") != 1 or not all(key.split(">")) or price < 0:
                raise ValueError(
                    f"inter_region pair {key!r}: {price} must be written 'us-east-1>us-west-2: 0.02' "
                    "(from-region>to-region, a non-negative price per GB)"
                )
        return self


class CloudPrices(_Strict):
    """One provider's list prices (USD per GB) and where they come from."""

    source: str = Field(description="The price page(s) these numbers are from.")
    bytes_per_gb: int = Field(1 << 30, gt=0, description="Bytes in the provider's billing GB.")
    inter_zone: InterZone
    inter_region: InterRegion
    internet_egress: float = Field(ge=0, description="Per GB out to the Internet (first tier).")
    nat_gateway: float = Field(0.0, ge=0, description="Per GB processed by a managed NAT gateway (either way).")
    cloud_service: float = Field(0.0, ge=0, description="Per GB to the cloud's services in the same region.")
    discount: float = Field(0.0, ge=0, lt=1, description="Negotiated discount on this cloud (0.2 = 20 % off).")


class PriceTable(_Strict):
    """Every cloud's prices, the date they were read, and the user's adjustments."""

    currency: str = "USD"
    read: date = Field(description="When the prices were read from the sources.")
    note: str = ""
    nat_flag: str = Field("NAT_GATEWAY", min_length=1, description="connectionFlags key of NAT'd flows.")
    default_cloud: str = Field("aws", description="Cloud assumed for rows with an empty localCloud.")
    discount: float = Field(0.0, ge=0, lt=1, description="Discount on every cloud (on top of each cloud's).")
    cross_zone_per_gb: float | None = Field(
        None, ge=0, description="Flat override: every inter-zone GB at this price (both sides together)."
    )
    clouds: dict[str, CloudPrices]

    @model_validator(mode="after")
    def _default_cloud_is_priced(self) -> PriceTable:
        if self.default_cloud not in self.clouds:
            raise ValueError(f"default_cloud {self.default_cloud!r} has no prices: use one of {sorted(self.clouds)}")
        return self

    def rates(self) -> dict[str, float]:
        """USD per byte by ``<cloud>/<class>`` (and ``<cloud>/inter_region/<from>><to>``), discounts applied."""
        out: dict[str, float] = {}
        for name, cloud in self.clouds.items():
            factor = (1 - self.discount) * (1 - cloud.discount) / cloud.bytes_per_gb
            inter_zone = (
                self.cross_zone_per_gb if self.cross_zone_per_gb is not None
                else cloud.inter_zone.out + cloud.inter_zone.in_
            )
            per_gb = {
                "inter_zone": inter_zone,
                "inter_region": cloud.inter_region.default,
                "internet": cloud.internet_egress,
                "cloud_service": cloud.cloud_service,
                "nat_gateway": cloud.nat_gateway,
            }
            per_gb |= {f"inter_region/{pair}": price for pair, price in cloud.inter_region.pairs.items()}
            out |= {f"{name}/{key}": price * factor for key, price in per_gb.items()}
        return out

    def caption(self) -> str:
        """One line for the top of every cost answer: what prices, read when, and what was changed."""
        changes = []
        if self.discount:
            changes.append(f"discount {self.discount:.0%}")
        changes += [f"{n} discount {c.discount:.0%}" for n, c in self.clouds.items() if c.discount]
        if self.cross_zone_per_gb is not None:
            changes.append(f"all cross-zone at {self.cross_zone_per_gb} {self.currency}/GB")
        return (
            f"prices: {self.currency} list prices read {self.read.isoformat()}"
            + (f" ({self.note})" if self.note else "")
            + (f"; {', '.join(changes)}" if changes else "")
        )


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the price file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a price file is a mapping (e.g. 'discount: 0.1'), not {type(data).__name__}")
    return data


def load_prices(override: Path | None = None) -> PriceTable:
    """The default table, with ``override``'s keys (or its ``prices:`` section) laid over it.

    Raises ValueError naming the file and the key when something is wrong.
    """
    data = _read_yaml(DEFAULT_PRICES)
    if override is not None:
        extra = _read_yaml(override)
        if "prices" in extra:
            if not isinstance(extra["prices"], dict):
                raise ValueError(f"{override}: 'prices:' must be a mapping of price keys")
            extra = extra["prices"]
        if "read" not in extra and extra:
            # The user changed numbers: the date of the default table no longer describes all of them.
            extra = {**extra, "note": f"{data.get('note', '')}; overridden by {override}".lstrip("; ")}
        data = _merge(data, extra)
    try:
        return PriceTable.model_validate(data)
    except ValidationError as exc:
        where = override or DEFAULT_PRICES
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"{where}: bad price table: {problems}") from None
