"""Hook specifications: the whole plugin surface of kubenetmon.

A plugin is a module or object with functions marked ``@hookimpl`` whose
names match the specs below. Built-in components are ordinary plugins; a
third-party distribution registers its module under the entry-point group
``kubenetmon``::

    [project.entry-points.kubenetmon]
    nat_gateway = "kubenetmon_nat_gateway"

Each ``kubenetmon_register_*`` hook returns a list of factories. Two plugins
providing the same component type for the same kind is a startup error
naming both.
"""

from __future__ import annotations

import argparse
from typing import Any

import pluggy

from kubenetmon.component import ExporterFactory, ExtensionFactory, ProcessorFactory, ReceiverFactory

PROJECT = "kubenetmon"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = [
    "hookimpl",
    "hookspec",
    "kubenetmon_register_commands",
    "kubenetmon_register_exporters",
    "kubenetmon_register_extensions",
    "kubenetmon_register_processors",
    "kubenetmon_register_receivers",
]


# --- Components --------------------------------------------------------------


@hookspec
def kubenetmon_register_receivers() -> list[ReceiverFactory[Any]]:
    """Return factories of receivers this plugin provides.

    A receiver produces :class:`~kubenetmon.flows.FlowBatch` es into the
    consumer it is created with (e.g. ``conntrack``, ``otlp``).
    """
    raise NotImplementedError


@hookspec
def kubenetmon_register_processors() -> list[ProcessorFactory[Any]]:
    """Return factories of processors this plugin provides.

    A processor consumes batches, changes them (attributes, classifies, sets
    ``connection_flags``, filters) and hands them to the next consumer.
    """
    raise NotImplementedError


@hookspec
def kubenetmon_register_exporters() -> list[ExporterFactory[Any]]:
    """Return factories of exporters this plugin provides.

    An exporter consumes batches and sends them out of the process; most
    build on :mod:`kubenetmon.exporterhelper` and only implement a push.
    """
    raise NotImplementedError


@hookspec
def kubenetmon_register_extensions() -> list[ExtensionFactory[Any]]:
    """Return factories of extensions (not in the data path, e.g. ``health_check``)."""
    raise NotImplementedError


# --- Command line ------------------------------------------------------------


@hookspec
def kubenetmon_register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add subcommands to the ``kubenetmon`` CLI.

    Call ``subparsers.add_parser(name, help=...)`` and set ``func`` with
    ``parser.set_defaults(func=callable)``; the callable receives the parsed
    ``argparse.Namespace`` and returns the process exit code.
    """
