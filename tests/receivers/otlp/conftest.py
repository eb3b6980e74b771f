"""Receivers started by a test are shut down at its end, even when it fails."""

from __future__ import annotations

from tests.otlp.otlp_testkit import receivers  # noqa: F401 (fixture)


