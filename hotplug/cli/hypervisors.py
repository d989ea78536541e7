"""Hypervisor admin commands: each hypervisor's own group (``vbox``, ``qemu``, ``libvirt``: prepare, status, resize
now, test guests), as its record in :mod:`hotplug.hypervisors` declares it, and what the groups share.

Their own failures (a VM not found, a guest that refused) print one line and exit 1, as the hypervisor's
tools do.
"""

from __future__ import annotations

import argparse

from hotplug.cli.common import Handler, Subparsers, add_command, mebibytes
from hotplug.hypervisors import HYPERVISORS

ORDER = 20


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    for hypervisor in HYPERVISORS.all():
        if hypervisor.admin is not None:
            hypervisor.admin(sub)


def guest_commands(
    gsub: Subparsers[argparse.ArgumentParser],
    start_handler: Handler,
    set_handler: Handler,
    load_handler: Handler,
    *,
    start: str,
    resize: str,
    load: str,
) -> argparse.ArgumentParser:
    """``start``, ``set`` and ``load``, which the QEMU and libvirt groups share (same options, their own help and
    work); the ``start`` parser, for a group's own options."""
    started = add_command(gsub, "start", start_handler, help=start)
    started.add_argument("name")
    started.add_argument("--max-vcpus", type=int, required=True)
    started.add_argument("--vcpus", type=int, default=1)
    started.add_argument(
        "--memory",
        type=mebibytes,
        default=256,
        metavar="SIZE",
        help="boot RAM: 512MiB, 1GiB; a bare number is MiB (256)",
    )
    resized = add_command(gsub, "set", set_handler, help=resize)
    resized.add_argument("name")
    resized.add_argument("--vcpus", type=int, required=True)
    loaded = add_command(gsub, "load", load_handler, help=load)
    loaded.add_argument("name")
    loaded.add_argument("--busy", type=int, required=True)
    return started
