from __future__ import annotations

import inspect
from typing import Any

import pytest

from kubenetmon import hookimpl, hookspecs
from kubenetmon.component import ExporterFactory, Kind
from kubenetmon.errors import PluginError
from kubenetmon.exporters.debug import DebugConfig, DebugExporter
from kubenetmon.plugins import BUILTIN_PLUGINS, build_plugin_manager, load_components


def test_every_builtin_plugin_registers_at_least_one_component() -> None:
    pm = build_plugin_manager(load_entry_points=False)
    registry = load_components(pm)
    providers = {entry.plugin for entry in registry.all()}
    for name in BUILTIN_PLUGINS:
        assert name in providers or name == "kubenetmon.demo", f"{name} registers no component"


def test_builtins_are_ordinary_plugins_with_their_module_name() -> None:
    registry = load_components(build_plugin_manager(load_entry_points=False))
    debug = registry.get(Kind.EXPORTER, "debug")
    assert debug is not None
    assert debug.plugin == "kubenetmon.exporters.debug"


class DuplicateDebug:
    @hookimpl
    def kubenetmon_register_exporters(self) -> list[ExporterFactory[Any]]:
        return [ExporterFactory(type="debug", config_model=DebugConfig, description="x", create=DebugExporter)]


def test_two_plugins_providing_one_type_is_an_error_naming_both() -> None:
    pm = build_plugin_manager(load_entry_points=False, extra_plugins=[DuplicateDebug()])
    with pytest.raises(PluginError) as info:
        load_components(pm)
    assert "exporter type 'debug' is provided by two plugins: 'kubenetmon.exporters.debug' and '" in str(info.value)
    assert "uninstall or disable one of them" in str(info.value)


class Misspelled:
    @hookimpl
    def kubenetmon_register_exporter(self) -> list[Any]:  # missing the final "s"
        return []


def test_misspelled_hook_fails_at_startup() -> None:
    with pytest.raises(PluginError) as info:
        build_plugin_manager(load_entry_points=False, extra_plugins=[Misspelled()])
    assert "kubenetmon_register_exporter" in str(info.value)
    assert "kubenetmon_register_exporters" in str(info.value)  # the list of real hooks


class WrongKind:
    @hookimpl
    def kubenetmon_register_processors(self) -> list[Any]:
        return [ExporterFactory(type="oops", config_model=DebugConfig, description="x", create=DebugExporter)]


def test_factory_of_the_wrong_kind_is_rejected() -> None:
    pm = build_plugin_manager(load_entry_points=False, extra_plugins=[WrongKind()])
    with pytest.raises(PluginError, match="which is not a processor factory"):
        load_components(pm)


def test_every_hookspec_is_documented_and_prefixed() -> None:
    specs = [getattr(hookspecs, n) for n in dir(hookspecs) if n.startswith("kubenetmon_")]
    assert {s.__name__ for s in specs} == {
        "kubenetmon_register_receivers",
        "kubenetmon_register_processors",
        "kubenetmon_register_exporters",
        "kubenetmon_register_extensions",
        "kubenetmon_register_commands",
    }
    for spec in specs:
        assert spec.__doc__ and len(spec.__doc__.strip()) > 40, f"{spec.__name__} needs a real docstring"
        assert inspect.signature(spec).return_annotation != inspect.Signature.empty
    assert set(hookspecs.__all__) >= {s.__name__ for s in specs}
