"""Who we are: the local cloud, region, cluster, environment and cell.

Configured once, under ``service::identity``, and handed to every component
through :class:`~kubenetmon.component.CreateSettings`, so that the
``cloud_prefix`` processor and the exporters agree on it (DESIGN §4).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["Identity"]


class Identity(BaseModel):
    """The local identity written to the ``local*`` and ``environment`` columns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cloud: Literal["", "aws", "gcp", "azure"] = Field(
        "", description="The cloud this cluster runs in (aws, gcp or azure); empty when not in a cloud."
    )
    region: str = Field(
        "", description="The cloud region, e.g. us-west-2. Normalised: lower case, spaces removed."
    )
    cluster: str = Field("", description="Name of this Kubernetes cluster (localCluster column).")
    environment: str = Field(
        "", description="Free-form environment name (development, staging, production…)."
    )
    cell: str = Field("", description="Optional cell name (localCell column).")

    @field_validator("region")
    @classmethod
    def _normalise_region(cls, value: str) -> str:
        # Provider files spell regions with spaces and capitals ("Germany West
        # Central"); normalising both sides the same way makes them comparable.
        return value.lower().replace(" ", "")
