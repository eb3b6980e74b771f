"""The ``kubenetmon`` command: run, validate, components, print-config, and plugin commands."""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from kubenetmon import __version__
from kubenetmon.config import expand_env, load_files, validate
from kubenetmon.errors import ComponentStartError, ConfigError, PluginError
from kubenetmon.plugins import ComponentRegistry, build_plugin_manager, load_components
from kubenetmon.telemetry.logs import configure_logging

__all__ = ["main", "mask_secrets"]

EXIT_OK, EXIT_ERROR, EXIT_INVALID = 0, 1, 2

# A running pipeline allocates four to six objects per flow (records, flows,
# endpoints) in bursts of thousands, and keeps large long-lived state (pod
# index, prefix tables, queued flows). With CPython's default (700, 10, 10) the
# cyclic GC runs young collections every few hundred flows and full ones over
# that state far too often; these thresholds cut the gateway's CPU per 10k flow
# records from ~510-560 ms to ~285-345 ms in bench/e2e_bench.py (same run,
# same machine; RSS unchanged). None of our data structures rely on cycles.
GC_THRESHOLDS = (50_000, 50, 100)

_SECRET_KEY = re.compile(r"password|passwd|secret|token|authorization|bearer|private_key|api_key", re.I)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@", re.I)


def mask_secrets(data: Any, key: str = "") -> Any:
    """Replace secret-looking values with ``<redacted>``, including passwords inside URLs."""
    if isinstance(data, dict):
        return {k: mask_secrets(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [mask_secrets(v, key) for v in data]
    if isinstance(data, str):
        if _SECRET_KEY.search(key) and data:
            return "<redacted>"
        return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:<redacted>@", data)
    return data


def _load(paths: Sequence[str], registry: ComponentRegistry) -> Any:
    raw = expand_env(load_files(paths))
    return validate(raw, registry), raw


def _cmd_validate(args: argparse.Namespace, registry: ComponentRegistry) -> int:
    _load(args.config, registry)
    print(f"config OK: {', '.join(args.config)}")
    return EXIT_OK


def _cmd_print_config(args: argparse.Namespace, registry: ComponentRegistry) -> int:
    raw = expand_env(load_files(args.config))
    if not args.no_validate:
        validate(raw, registry)
    print(yaml.safe_dump(mask_secrets(raw), sort_keys=False), end="")
    return EXIT_OK


def _cmd_components(args: argparse.Namespace, registry: ComponentRegistry) -> int:
    rows = [
        {
            "kind": e.factory.kind.value,
            "type": e.factory.type,
            "stability": e.factory.stability.value,
            "plugin": e.plugin,
            "description": e.factory.description,
        }
        for e in registry.all()
    ]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in ("kind", "type", "stability", "plugin")}
    header = "  ".join(k.upper().ljust(widths[k]) for k in widths) + "  DESCRIPTION"
    print(header)
    for r in rows:
        print("  ".join(r[k].ljust(widths[k]) for k in widths) + "  " + r["description"])
    return EXIT_OK


def _cmd_run(args: argparse.Namespace, registry: ComponentRegistry) -> int:
    from kubenetmon.pipeline.service import Service

    config, _ = _load(args.config, registry)
    gc.set_threshold(*GC_THRESHOLDS)
    logs = config.service.telemetry.logs
    configure_logging(args.log_level or logs.level, logs.encoding)
    service = Service(config, registry)
    service.run()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubenetmon",
        description="Meter data transfer of Kubernetes workloads: conntrack → attribution → ClickHouse.",
    )
    parser.add_argument("--version", action="version", version=f"kubenetmon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", action="append", required=True, metavar="FILE",
            help="YAML config; repeat to merge several (later files win)",
        )

    p = sub.add_parser("run", help="run the pipelines of a config until SIGTERM/SIGINT")
    with_config(p)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override the config's level")
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("validate", help="check a config; exit 2 listing every problem")
    with_config(p)
    p.set_defaults(handler=_cmd_validate)

    p = sub.add_parser("print-config", help="print a config after substitution, with secrets masked")
    with_config(p)
    p.add_argument("--no-validate", action="store_true", help="print even if the config is invalid")
    p.set_defaults(handler=_cmd_print_config)

    p = sub.add_parser("components", help="list every receiver, processor, exporter and extension known")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(handler=_cmd_components)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Our own handler, not basicConfig's: `run` replaces it with the configured encoding, so a line is
    # never printed twice (once plain, once JSON; issue 16 item 11).
    configure_logging("warning", "console")
    try:
        pm = build_plugin_manager()
        registry = load_components(pm)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    pm.hook.kubenetmon_register_commands(subparsers=sub)
    args = parser.parse_args(argv)
    try:
        if getattr(args, "handler", None) is not None:
            return int(args.handler(args, registry))
        if getattr(args, "func", None) is not None:
            return int(args.func(args))
        parser.print_help()
        return EXIT_INVALID
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except ComponentStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
