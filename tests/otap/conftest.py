"""Exporters and receivers started by a test are shut down at its end, even when it fails."""

from tests.otlp.otlp_testkit import exporters, receivers  # noqa: F401 (fixtures)
