from __future__ import annotations

from typing import Literal

from pydantic import Field

from kubenetmon.component import ComponentConfig


class DebugConfig(ComponentConfig):
    verbosity: Literal["basic", "normal", "detailed"] = Field(
        "basic",
        description="basic: one line per batch with counts; normal: one line per flow; "
        "detailed: every field of every record and flow.",
    )
