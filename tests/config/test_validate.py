from __future__ import annotations

from typing import Any

import pytest

from kubenetmon.component import ComponentID, Kind
from kubenetmon.config import validate
from kubenetmon.errors import ConfigError
from kubenetmon.plugins import ComponentRegistry, build_plugin_manager, load_components
from tests.pipeline.recording import RecordingPlugin, TagConfig


@pytest.fixture
def registry() -> ComponentRegistry:
    return load_components(build_plugin_manager(load_entry_points=False, extra_plugins=[RecordingPlugin()]))


def good() -> dict[str, Any]:
    return {
        "receivers": {"replay": {}},
        "processors": {"tag/a": {"flag": "a"}},
        "exporters": {"sink": None, "debug": {"verbosity": "normal"}},
        "extensions": {"health_check": {"endpoint": "127.0.0.1:0"}},
        "service": {
            "extensions": ["health_check"],
            "pipelines": {"flows": {"receivers": ["replay"], "processors": ["tag/a"], "exporters": ["sink", "debug"]}},
            "identity": {"cloud": "aws", "region": "US West 2", "cluster": "c1"},
        },
    }


def problems(raw: dict[str, Any], registry: ComponentRegistry) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(raw, registry)
    return [str(p) for p in info.value.problems]


def test_valid_config_gives_typed_component_configs(registry: ComponentRegistry) -> None:
    config = validate(good(), registry)
    tag = config.component(Kind.PROCESSOR, ComponentID("tag", "a"))
    assert isinstance(tag, TagConfig)
    assert tag.flag == "a"
    assert tag.batch_size == 1  # default filled in
    assert config.service.identity.region == "uswest2"  # normalised like provider data


def test_unknown_key_is_an_error_naming_the_known_keys(registry: ComponentRegistry) -> None:
    raw = good()
    raw["processors"]["tag/a"]["flagg"] = "x"
    assert problems(raw, registry) == ["processors::tag/a::flagg: unknown key; known keys: batch_size, flag"]


def test_bound_violation_quotes_the_value(registry: ComponentRegistry) -> None:
    raw = good()
    raw["processors"]["tag/a"]["batch_size"] = 0
    assert problems(raw, registry) == ["processors::tag/a::batch_size: must be > 0, got 0"]


def test_literal_violation_lists_the_choices(registry: ComponentRegistry) -> None:
    raw = good()
    raw["service"]["identity"]["cloud"] = "aws2"
    assert problems(raw, registry) == ["service::identity::cloud: 'aws2' is not one of '', aws, gcp, azure"]


def test_unknown_component_type_lists_known_types(registry: ComponentRegistry) -> None:
    raw = good()
    raw["exporters"]["kafka"] = {}
    known = registry.types(Kind.EXPORTER)
    assert "debug" in known and "sink" in known
    assert problems(raw, registry) == [
        f"exporters::kafka: unknown exporter type 'kafka'; known exporters: {', '.join(known)} "
        "(a plugin providing it may not be installed)"
    ]


def test_invalid_component_id(registry: ComponentRegistry) -> None:
    raw = good()
    raw["exporters"]["Sink/x y"] = {}
    assert problems(raw, registry) == [
        "exporters::Sink/x y: 'Sink/x y' is not a valid component id: the type must be lower_snake_case "
        "(letters, digits, '_'), optionally followed by '/name'"
    ]


def test_reference_to_unconfigured_component_lists_configured_ones(registry: ComponentRegistry) -> None:
    raw = good()
    raw["service"]["pipelines"]["flows"]["processors"] = ["k8s"]
    assert problems(raw, registry) == [
        "service::pipelines::flows: references processor 'k8s' which is not configured; known: tag/a"
    ]


def test_pipeline_needs_receivers_and_exporters(registry: ComponentRegistry) -> None:
    raw = good()
    raw["service"]["pipelines"]["flows"]["receivers"] = []
    raw["service"]["pipelines"]["flows"]["exporters"] = []
    assert problems(raw, registry) == [
        "service::pipelines::flows: must have at least one receiver",
        "service::pipelines::flows: must have at least one exporter",
    ]


def test_component_listed_twice_in_a_pipeline(registry: ComponentRegistry) -> None:
    raw = good()
    raw["service"]["pipelines"]["flows"]["exporters"] = ["sink", "sink"]
    assert problems(raw, registry) == ["service::pipelines::flows: lists exporter 'sink' twice"]


def test_missing_service_and_unknown_section(registry: ComponentRegistry) -> None:
    raw = good()
    del raw["service"]
    raw["pipelines"] = {}
    assert problems(raw, registry) == [
        "pipelines: unknown section; known sections: receivers, processors, exporters, extensions, service",
        "service: required: it lists the pipelines to run",
    ]


def test_all_problems_are_reported_at_once(registry: ComponentRegistry) -> None:
    raw = good()
    raw["processors"]["tag/a"]["batch_size"] = -1
    raw["exporters"]["debug"]["verbosity"] = "loud"
    raw["extensions"]["health_check"]["endpoint"] = "nowhere"
    raw["service"]["extensions"] = ["health_check", "pprof"]
    found = problems(raw, registry)
    assert found == [
        "processors::tag/a::batch_size: must be > 0, got -1",
        "exporters::debug::verbosity: 'loud' is not one of basic, normal, detailed",
        "extensions::health_check::endpoint: string should match pattern '^[^:]*:\\d+$', got 'nowhere'",
        "service::extensions: references extension 'pprof' which is not configured; known: health_check",
    ]


def test_invalid_component_body_does_not_also_count_as_unconfigured(registry: ComponentRegistry) -> None:
    raw = good()
    raw["processors"]["tag/a"] = {"batch_size": "many"}
    found = problems(raw, registry)
    assert len(found) == 1
    assert found[0].startswith("processors::tag/a::batch_size: input should be a valid integer")


def test_infinite_and_nan_numbers_are_rejected_everywhere_with_their_path(registry: ComponentRegistry) -> None:
    # `.inf` passed `gt=0` and then ended in OverflowError when the service shut down.
    raw = good()
    raw["service"]["shutdown_timeout"] = float("inf")
    raw["processors"]["cloud_prefix"] = {"offline": True, "files_dir": "/x", "fetch_timeout": "inf"}  # as from ${env:…}
    raw["receivers"]["otlp"] = {"grpc": {"endpoint": "127.0.0.1:0", "keepalive": {"max_connection_age": "Infinity"}}}
    assert sorted(p for p in problems(raw, registry) if "finite" in p) == [
        "processors::cloud_prefix::fetch_timeout: must be a finite number, got inf",
        "receivers::otlp::grpc::keepalive::max_connection_age: must be a finite number, got inf",
        "service::shutdown_timeout: must be a finite number, got inf",
    ]
