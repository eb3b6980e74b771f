"""The example third-party plugin, installed for real and found through its entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from kubenetmon.component import Kind
from kubenetmon.config import validate
from kubenetmon.flows import FlowBatch
from kubenetmon.pipeline import Service
from kubenetmon.plugins import build_plugin_manager, load_components
from tests.flowgen import flow
from tests.pipeline.recording import RecordingPlugin

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kubenetmon-nat-gateway"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        check=True,
    )
    sys.path.insert(0, str(target))
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m.startswith("kubenetmon_nat_gateway")]:
            del sys.modules[name]


def test_components_command_lists_the_installed_plugin(installed: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    out = subprocess.run(
        [sys.executable, "-m", "kubenetmon", "components", "--format", "json"],
        capture_output=True, text=True, check=True, env=env,
    )
    row = next(r for r in json.loads(out.stdout) if r["type"] == "nat_gateway")
    assert row["kind"] == "processor" and row["plugin"] == "nat_gateway"


def test_plugin_processor_sets_connection_flags_in_a_pipeline(installed: Path) -> None:
    recording = RecordingPlugin()
    registry = load_components(build_plugin_manager(extra_plugins=[recording]))
    assert registry.get(Kind.PROCESSOR, "nat_gateway") is not None
    raw = {
        "receivers": {"replay": {}},
        "processors": {"nat_gateway": {"remote_cidrs": ["52.0.0.0/8"]}},
        "exporters": {"sink": {}},
        "service": {
            "pipelines": {"flows": {"receivers": ["replay"], "processors": ["nat_gateway"], "exporters": ["sink"]}},
            "telemetry": {"metrics": {"address": ""}},
        },
    }
    service = Service(validate(raw, registry), registry, CollectorRegistry())
    service.start()
    try:
        public, private = flow(1), flow(2)
        public.remote.address, public.connection_class = "52.1.2.3", "PUBLIC_INTERNET"
        private.remote.address, private.connection_class = "10.1.2.3", "INTRA_VPC"
        recording.receivers["replay"].emit(FlowBatch(flows=[public, private]))
    finally:
        service.shutdown()
    flows = recording.sinks["sink"].batches[0].flows
    assert [f.connection_flags for f in flows] == [{"NAT_GATEWAY": True}, {"NAT_GATEWAY": False}]


def test_plugin_config_is_validated_like_builtins(installed: Path) -> None:
    registry = load_components(build_plugin_manager())
    raw = {"processors": {"nat_gateway": {"remote_cidrs": ["not-a-cidr"]}}, "service": {"pipelines": {}}}
    with pytest.raises(Exception) as info:
        validate(raw, registry)
    assert "processors::nat_gateway::remote_cidrs" in str(info.value)
