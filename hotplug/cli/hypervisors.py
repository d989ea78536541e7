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
    qstart = qsub.add_parser("start", help="boot a guest (the image is built on first use)")
    qstart.add_argument("name")
    qstart.add_argument("--max-vcpus", type=int, required=True)
    qstart.add_argument("--vcpus", type=int, default=1)
    qstart.add_argument("--memory", type=int, default=256, help="MiB")
    qset = qsub.add_parser("set", help="resize a guest now")
    qset.add_argument("name")
    qset.add_argument("--vcpus", type=int, required=True)
    qload = qsub.add_parser("load", help="run N busy loops in the guest (0 stops them)")
    qload.add_argument("name")
    qload.add_argument("--busy", type=int, required=True)
    qstatus = qsub.add_parser("status", help="every guest: vCPUs as QMP sees them and as the guest does")
    qstatus.add_argument("--json", action="store_true")
    qstop = qsub.add_parser("stop")
    qstop.add_argument("name")

    lv = add_command(
        sub, "libvirt", cmd_libvirt, help="libvirt domains: prepare, status, resize now; test domains for demos"
    )
    lv.add_argument("--uri", default=None, help="libvirt URI ($HOTPLUG_LIBVIRT_URI; default qemu:///system)")
    lsub = lv.add_subparsers(dest="libvirt_command", required=True)
    lstart = lsub.add_parser("start", help="start a transient test domain from the project's guest image")
    lstart.add_argument("name")
    lstart.add_argument("--max-vcpus", type=int, required=True)
    lstart.add_argument("--vcpus", type=int, default=1)
    lstart.add_argument("--memory", type=int, default=256, help="MiB")
    lstop = lsub.add_parser("stop", help="destroy a test domain started by 'hotplug libvirt start'")
    lstop.add_argument("name")
    lset = lsub.add_parser("set", help="resize a running domain now")
    lset.add_argument("name")
    lset.add_argument("--vcpus", type=int, required=True)
    lload = lsub.add_parser("load", help="test domains: run N busy loops in the guest (0 stops them)")
    lload.add_argument("name")
    lload.add_argument("--busy", type=int, required=True)
    lstatus = lsub.add_parser("status", help="every domain: state, vCPUs as libvirt and as the guest sees them")
    lstatus.add_argument("--json", action="store_true")
    lprep = lsub.add_parser("prepare", help="one-time set-up of a shut-off domain for hot-plug")
    lprep.add_argument("name")
    lprep.add_argument("--max-vcpus", type=int, required=True)
    lprep.add_argument("--start-vcpus", type=int, default=None)
    lprep.add_argument("--min-vcpus", type=int, default=1)


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
