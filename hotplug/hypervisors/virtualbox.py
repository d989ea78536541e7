"""VirtualBox as a hypervisor: ``up`` watches and resizes the VMs ``VBoxManage`` lists as running (it starts none);
``hotplug vbox prepare|status|set`` are its admin commands, through the same client and driver the services use."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from hotplug.cli.common import Subparsers, add_command
from hotplug.hypervisors import Hypervisor
from hotplug.hypervisors.resize import resize
from shared.virtualbox import VBoxError, VBoxManage


async def prepare(vbox: VBoxManage, vm: str, max_vcpus: int, start_vcpus: int | None) -> int:
    """One-time set-up with the VM powered off: hot-plug on, ``max_vcpus`` possible, ``start_vcpus`` attached."""
    start = max_vcpus if start_vcpus is None else start_vcpus
    if not 1 <= start <= max_vcpus or max_vcpus > 32:
        print(
            f"hotplug vbox prepare: need 1 <= --start-vcpus <= --max-vcpus <= 32 (live hot-plug covers CPU ids "
            f"up to 31), got {start} and {max_vcpus}",
            file=sys.stderr,
        )
        return 2
    info = await vbox.info(vm)
    if info.state in ("running", "paused", "starting", "saved", "livesnapshotting"):
        print(
            f"hotplug vbox prepare: '{vm}' is {info.state}; power it off first (VBoxManage controlvm "
            f"<vm> poweroff), then run this again",
            file=sys.stderr,
        )
        return 1
    # --cpus before --cpuhotplug: hot-plug on attaches CPUs 0..cpus-1 as the count is at that moment.
    await vbox.check("modifyvm", vm, "--cpus", str(max_vcpus), "--cpuhotplug", "on")
    info = await vbox.info(vm)
    detach = [str(cpu) for cpu in sorted(info.attached, reverse=True) if cpu >= start]
    if detach:
        args = [a for cpu in detach for a in ("--unplugcpu", cpu)]
        await vbox.check("modifyvm", vm, *args)
    info = await vbox.info(vm)
    print(
        f"{info.name}: hot-plug on, {len(info.attached)} of {info.cpus} vCPUs attached "
        f"(ids {', '.join(map(str, info.attached))})"
    )
    return 0


async def status(vbox: VBoxManage, as_json: bool) -> int:
    rows: list[dict[str, object]] = []
    for name, uuid in await vbox.list("vms"):
        try:
            info = await vbox.info(uuid)
            rows.append(
                {
                    "name": name,
                    "uuid": uuid,
                    "state": info.state,
                    "hotplug": info.hotplug,
                    "max_vcpus": info.cpus,
                    "attached_cpus": list(info.attached),
                    "vcpus": len(info.attached),
                }
            )
        except VBoxError as exc:
            rows.append({"name": name, "uuid": uuid, "error": exc.code.value, "message": exc.message})
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("name", "state", "hot-plug", "vCPUs", "attached ids"):
        table.add_column(column)
    for r in rows:
        if "error" in r:
            table.add_row(str(r["name"]), f"error: {r['error']}", "", "", str(r["message"]))
        else:
            table.add_row(
                str(r["name"]),
                str(r["state"]),
                "on" if r["hotplug"] else "off",
                f"{r['vcpus']}/{r['max_vcpus']}",
                ",".join(str(c) for c in r["attached_cpus"]),  # type: ignore[attr-defined]
            )
    Console().print(table)
    return 0


async def set_vcpus(vbox: VBoxManage, vm: str, vcpus: int) -> int:
    from services.actuator.drivers.virtualbox import VirtualBoxDriver

    return await resize(VirtualBoxDriver(vbox), vm, vcpus)


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    vbox = sub.add_parser("vbox", help="VirtualBox admin: prepare VMs for hot-plug, status, resize now")
    vsub = vbox.add_subparsers(dest="vbox_command", required=True)
    prep = add_command(
        vsub,
        "prepare",
        _reported(lambda v, a: prepare(v, a.vm, a.max_vcpus, a.start_vcpus)),
        help="one-time set-up, VM powered off",
    )
    prep.add_argument("vm")
    prep.add_argument("--max-vcpus", type=int, required=True)
    prep.add_argument("--start-vcpus", type=int, default=None)
    stat = add_command(
        vsub,
        "status",
        _reported(lambda v, a: status(v, a.json)),
        help="every VM with state, maximum and attached CPUs",
    )
    stat.add_argument("--json", action="store_true")
    vset = add_command(vsub, "set", _reported(lambda v, a: set_vcpus(v, a.vm, a.vcpus)), help="resize a running VM now")
    vset.add_argument("vm")
    vset.add_argument("--vcpus", type=int, required=True)


def _reported(
    work: Callable[[VBoxManage, argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    """A command run against ``VBoxManage``; its failures print one line and exit 1, as VBoxManage's do."""

    def handler(args: argparse.Namespace) -> int:
        vbox = VBoxManage()
        try:
            return asyncio.run(work(vbox, args))
        except VBoxError as exc:
            print(f"{exc.code.value}: {exc.message}", file=sys.stderr)
            return 1

    return handler


ORDER = 20

HYPERVISOR: Hypervisor[Any] = Hypervisor(
    name="virtualbox",
    summary="virtualbox: the VMs VBoxManage lists as running ($HOTPLUG_VBOXMANAGE or PATH)",
    admin=register,
)
