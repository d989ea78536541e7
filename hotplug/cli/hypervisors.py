"""Hypervisor admin commands: ``vbox``, ``qemu`` and ``libvirt`` (prepare, status, resize now, test guests).

Their own failures (a VM not found, a guest that refused) print one line and exit 1, as the hypervisor's
tools do.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from hotplug.cli.common import Subparsers, add_command

ORDER = 20


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    vbox = add_command(sub, "vbox", cmd_vbox, help="VirtualBox admin: prepare VMs for hot-plug, status, resize now")
    vsub = vbox.add_subparsers(dest="vbox_command", required=True)
    prep = vsub.add_parser("prepare", help="one-time set-up, VM powered off")
    prep.add_argument("vm")
    prep.add_argument("--max-vcpus", type=int, required=True)
    prep.add_argument("--start-vcpus", type=int, default=None)
    stat = vsub.add_parser("status", help="every VM with state, maximum and attached CPUs")
    stat.add_argument("--json", action="store_true")
    vset = vsub.add_parser("set", help="resize a running VM now")
    vset.add_argument("vm")
    vset.add_argument("--vcpus", type=int, required=True)

    qemu = add_command(sub, "qemu", cmd_qemu, help="real QEMU guests with live vCPU hot-plug (TCG)")
    qsub = qemu.add_subparsers(dest="qemu_command", required=True)
    _guest_commands(
        qsub,
        start="boot a guest (the image is built on first use)",
        resize="resize a guest now",
        load="run N busy loops in the guest (0 stops them)",
    )
    qstatus = qsub.add_parser("status", help="every guest: vCPUs as QMP sees them and as the guest does")
    qstatus.add_argument("--json", action="store_true")
    qstop = qsub.add_parser("stop")
    qstop.add_argument("name")

    lv = add_command(
        sub, "libvirt", cmd_libvirt, help="libvirt domains: prepare, status, resize now; test domains for demos"
    )
    lv.add_argument("--uri", default=None, help="libvirt URI ($HOTPLUG_LIBVIRT_URI; default qemu:///system)")
    lsub = lv.add_subparsers(dest="libvirt_command", required=True)
    _guest_commands(
        lsub,
        start="start a transient test domain from the project's guest image",
        resize="resize a running domain now",
        load="test domains: run N busy loops in the guest (0 stops them)",
    )
    lstop = lsub.add_parser("stop", help="destroy a test domain started by 'hotplug libvirt start'")
    lstop.add_argument("name")
    lstatus = lsub.add_parser("status", help="every domain: state, vCPUs as libvirt and as the guest sees them")
    lstatus.add_argument("--json", action="store_true")
    lprep = lsub.add_parser("prepare", help="one-time set-up of a shut-off domain for hot-plug")
    lprep.add_argument("name")
    lprep.add_argument("--max-vcpus", type=int, required=True)
    lprep.add_argument("--start-vcpus", type=int, default=None)
    lprep.add_argument("--min-vcpus", type=int, default=1)


def _guest_commands(gsub: Subparsers[argparse.ArgumentParser], *, start: str, resize: str, load: str) -> None:
    """``start``, ``set`` and ``load``, which the QEMU and libvirt groups share (same options, their own help)."""
    started = gsub.add_parser("start", help=start)
    started.add_argument("name")
    started.add_argument("--max-vcpus", type=int, required=True)
    started.add_argument("--vcpus", type=int, default=1)
    started.add_argument("--memory", type=int, default=256, help="MiB")
    resized = gsub.add_parser("set", help=resize)
    resized.add_argument("name")
    resized.add_argument("--vcpus", type=int, required=True)
    loaded = gsub.add_parser("load", help=load)
    loaded.add_argument("name")
    loaded.add_argument("--busy", type=int, required=True)


def cmd_vbox(args: argparse.Namespace) -> int:
    from hotplug import vbox_cmd
    from shared.virtualbox import VBoxError, VBoxManage

    vbox = VBoxManage()
    try:
        if args.vbox_command == "prepare":
            return asyncio.run(vbox_cmd.prepare(vbox, args.vm, args.max_vcpus, args.start_vcpus))
        if args.vbox_command == "status":
            return asyncio.run(vbox_cmd.status(vbox, args.json))
        from hotplug.resize import resize
        from services.actuator.drivers.virtualbox import VirtualBoxDriver

        return asyncio.run(resize(VirtualBoxDriver(vbox), args.vm, args.vcpus))
    except VBoxError as exc:
        print(f"{exc.code.value}: {exc.message}", file=sys.stderr)
        return 1


def cmd_qemu(args: argparse.Namespace) -> int:
    from hotplug import qemu_cmd
    from shared.qemu.image import ImageError
    from shared.qemu.vm import QemuError

    try:
        if args.qemu_command == "start":
            return qemu_cmd.start(args.name, args.max_vcpus, args.vcpus, args.memory)
        if args.qemu_command == "set":
            return qemu_cmd.set_vcpus(args.name, args.vcpus)
        if args.qemu_command == "load":
            return qemu_cmd.load(args.name, args.busy)
        if args.qemu_command == "status":
            return qemu_cmd.status(args.json)
        return qemu_cmd.stop(args.name)
    except (QemuError, ImageError) as exc:
        print(f"hotplug qemu {args.qemu_command}: {exc}", file=sys.stderr)
        return 1


def cmd_libvirt(args: argparse.Namespace) -> int:
    from hotplug import libvirt_cmd
    from shared.libvirt.connection import Connection, LibvirtMissing
    from shared.qemu.image import ImageError

    try:
        conn = Connection(args.uri)
        try:
            command = args.libvirt_command
            if command == "start":
                return libvirt_cmd.start(conn, args.name, args.max_vcpus, args.vcpus, args.memory)
            if command == "stop":
                return libvirt_cmd.stop(conn, args.name)
            if command == "set":
                return libvirt_cmd.set_vcpus(conn, args.name, args.vcpus)
            if command == "load":
                return libvirt_cmd.load(conn, args.name, args.busy)
            if command == "status":
                return libvirt_cmd.status(conn, args.json)
            return libvirt_cmd.prepare(conn, args.name, args.max_vcpus, args.start_vcpus, args.min_vcpus)
        finally:
            conn.close()
    except libvirt_cmd.LibvirtCommandError as exc:
        print(f"{exc.code or f'hotplug libvirt {args.libvirt_command}'}: {exc.message}", file=sys.stderr)
        return 1
    except (LibvirtMissing, ImageError) as exc:
        print(f"hotplug libvirt {args.libvirt_command}: {exc}", file=sys.stderr)
        return 1
