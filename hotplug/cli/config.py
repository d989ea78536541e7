"""``hotplug config``: ``check FILE`` (validate; the rule each known VM falls under) and ``reference`` (every key
of the file, generated from its types)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hotplug.cli.common import Subparsers, add_command, host_option
from shared.runtime import resolve_nats_url

ORDER = 15  # after the services


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    config = sub.add_parser("config", help="the config file: check one, or print the reference of its keys")
    csub = config.add_subparsers(dest="config_command", required=True)
    check = add_command(
        csub,
        "check",
        cmd_check,
        help="validate a config file (exit 2 with file:line: reason if invalid) and print the rule each known "
        "VM falls under",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    check.add_argument(
        "--nats", default=None, help="list the VMs in this broker's metrics stream too ($HOTPLUG_NATS_URL)"
    )
    check.add_argument(
        "--vm", action="append", default=[], metavar="NAME", help="a VM to list (HOST/VM, or VM on --host); repeatable"
    )
    host_option(check, "the host of --vm names given without one")
    add_command(csub, "reference", cmd_reference, help="print every key of the config file, as Markdown")


def cmd_check(args: argparse.Namespace) -> int:
    from hotplug.config import check

    return check(args.file, args.vm, resolve_nats_url(args.nats), args.host)


def cmd_reference(args: argparse.Namespace) -> int:
    from hotplug.config import reference

    print(reference(), end="")
    return 0
