"""The ``hotplug`` command: every service, ``up`` to run them all, and the tools to study a run.

Each module of this package that defines ``register(subparsers)`` is a command group: it adds its
subcommands, each with its handler (``add_command``), and is found here by itself, ordered by its ``ORDER``.
A new group is one new module. ``main`` only parses, dispatches and formats: a :class:`UserError` becomes
one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType

from hotplug.cli.common import Handler
from hotplug.config import apply_file
from shared.errors import UserError
from shared.runtime import setup_logging

__all__ = ["build_parser", "main"]

_LAST = 1000  # a group without ORDER comes after the others


def command_groups() -> list[ModuleType]:
    """This package's modules that register commands, in their ``ORDER``."""
    modules = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]
    groups = [m for m in modules if callable(getattr(m, "register", None))]
    return sorted(groups, key=lambda m: (getattr(m, "ORDER", _LAST), m.__name__))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotplug", description="Live vCPU hot-plug autoscaler for VMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in command_groups():
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser()  # it imports the plug-ins named in $HOTPLUG_PLUGINS
        # Built-in defaults < the config file < environment variables become the command's defaults, before the
        # command line is read, so a flag given beats them (hotplug/config.py; every flag defaults to "not given").
        loaded = apply_file(parser, argv)
    except UserError as exc:
        print(f"hotplug: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.config_file = loaded
    setup_logging(getattr(args, "log_level", "WARNING"))
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except UserError as exc:
        print(f"hotplug {args.command}: {exc}", file=sys.stderr)
        return 2
