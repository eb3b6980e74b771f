"""The plugin manager: built-in components and third-party plugins, found the same way."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy

from kubenetmon import hookspecs
from kubenetmon.component import Factory, Kind
from kubenetmon.errors import PluginError

__all__ = ["BUILTIN_PLUGINS", "ComponentRegistry", "RegisteredFactory", "build_plugin_manager", "load_components"]

# Built-in components, each an ordinary plugin module with ``@hookimpl`` functions.
# Keep one module per line, sorted by kind then name.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "kubenetmon.demo",
    "kubenetmon.exporters.clickhouse",
    "kubenetmon.exporters.debug",
    "kubenetmon.exporters.otlp",
    "kubenetmon.extensions.health_check",
    "kubenetmon.processors.cloud_prefix",
    "kubenetmon.processors.connection_flags",
    "kubenetmon.processors.k8s_attributes",
    "kubenetmon.receivers.conntrack",
    "kubenetmon.receivers.otlp",
)

_HOOKS: dict[Kind, str] = {
    Kind.RECEIVER: "kubenetmon_register_receivers",
    Kind.PROCESSOR: "kubenetmon_register_processors",
    Kind.EXPORTER: "kubenetmon_register_exporters",
    Kind.EXTENSION: "kubenetmon_register_extensions",
}


def build_plugin_manager(
    *, load_entry_points: bool = True, extra_plugins: Iterable[object] = ()
) -> pluggy.PluginManager:
    """Build the manager: specs, built-ins, entry-point plugins, then ``extra_plugins``.

    Misspelled hook implementations fail here (``check_pending``), not when
    first called.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        module: ModuleType = importlib.import_module(name)
        pm.register(module, name=name)
    if load_entry_points:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for plugin in extra_plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"{exc}. Hook implementations must be named after a hook in kubenetmon.hookspecs "
            f"({', '.join(sorted(n for n in dir(hookspecs) if n.startswith('kubenetmon_')))})"
        ) from exc
    return pm


@dataclass(frozen=True)
class RegisteredFactory:
    factory: Factory[Any]
    plugin: str  # the name of the plugin that provided it


class ComponentRegistry:
    """Every known factory, by kind and type, with the plugin that provided it."""

    def __init__(self, entries: dict[Kind, dict[str, RegisteredFactory]]) -> None:
        self._entries = entries

    def get(self, kind: Kind, type_: str) -> RegisteredFactory | None:
        return self._entries.get(kind, {}).get(type_)

    def types(self, kind: Kind) -> list[str]:
        return sorted(self._entries.get(kind, {}))

    def all(self) -> list[RegisteredFactory]:
        return [e for kind in Kind for _, e in sorted(self._entries.get(kind, {}).items())]


def load_components(pm: pluggy.PluginManager) -> ComponentRegistry:
    """Collect the factories every plugin registers; duplicate types are an error naming both."""
    entries: dict[Kind, dict[str, RegisteredFactory]] = {kind: {} for kind in Kind}
    problems: list[str] = []
    for kind, hook_name in _HOOKS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
            factories = impl.function()
            for factory in factories or ():
                if not isinstance(factory, Factory) or factory.kind is not kind:
                    problems.append(
                        f"plugin {plugin_name!r}: {hook_name} returned {factory!r}, "
                        f"which is not a {kind.value} factory"
                    )
                    continue
                previous = entries[kind].get(factory.type)
                if previous is not None:
                    problems.append(
                        f"{kind.value} type {factory.type!r} is provided by two plugins: "
                        f"{previous.plugin!r} and {plugin_name!r}; uninstall or disable one of them"
                    )
                    continue
                entries[kind][factory.type] = RegisteredFactory(factory, plugin_name)
    if problems:
        raise PluginError("; ".join(problems))
    return ComponentRegistry(entries)
