"""QEMU as a hypervisor: real guests with live vCPU hot-plug (TCG). ``up`` boots ``--vms`` guests for the run and
stops them after; ``hotplug qemu start|set|load|status|stop`` are its admin commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hotplug.cli.common import Handler, Subparsers, add_command, mebibytes
from hotplug.hypervisors import DEFAULT_VMS, Hypervisor
from hotplug.hypervisors.resize import resize
from shared.qemu.image import ImageError, ensure_image
from shared.qemu.vm import DIR_ENV, QemuError, QemuVm, running_vms

if TYPE_CHECKING:  # the record is read by every command's parser: up's own modules load when up runs
    from hotplug.up import UpOptions


def start(
    name: str,
    max_vcpus: int,
    vcpus: int,
    memory_mb: int,
    root: Path | None = None,
    *,
    max_memory_mb: int | None = None,
    balloon: bool = False,
) -> int:
    vm = QemuVm.start(
        name,
        ensure_image(),
        max_vcpus=max_vcpus,
        vcpus=vcpus,
        memory_mb=memory_mb,
        root=root,
        max_memory_mb=max_memory_mb,
        balloon=balloon,
    )
    memory = f"{memory_mb} MiB" + (f" of {max_memory_mb} MiB (virtio-mem)" if max_memory_mb else "")
    memory += ", balloon" if balloon else ""
    print(
        f"{name}: running (pid {vm.state().pid}), {vcpus} of {max_vcpus} vCPUs, {memory}; guest control: {vm.ctl_path}"
    )
    return 0


def set_vcpus(name: str, target: int, root: Path | None = None) -> int:
    from services.actuator.drivers.qemu import QemuDriver

    return asyncio.run(resize(QemuDriver(root), name, target))


def load(name: str, busy: int, root: Path | None = None) -> int:
    vm = QemuVm(name, root)
    if not vm.running():
        raise QemuError(f"VM {name} is not running")
    vm.send(f"busy {busy}")
    print(f"{name}: {busy} busy loop(s)")
    return 0


async def _status_rows(root: Path | None) -> list[dict[str, Any]]:
    rows = []
    for vm in await asyncio.to_thread(running_vms, root):
        state = await asyncio.to_thread(vm.state)
        async with vm.qmp(monitor=True) as qmp:
            cpus = cast(list[dict[str, Any]], await qmp.execute("query-cpus-fast"))
        stat = await asyncio.to_thread(vm.guest_stat)
        rows.append(
            {
                "name": vm.name,
                "pid": state.pid,
                "vcpus": len(cpus),
                "guest_online_vcpus": len(stat.online) if stat else None,
                "max_vcpus": state.max_vcpus,
                "hotplug_adds_left": state.adds_left,
                # memory as started (0: not recorded or no device) and as the guest last reported it
                "boot_memory_bytes": state.memory_bytes,
                "max_memory_bytes": state.memory_bytes + state.vmem_bytes,
                "balloon": state.balloon,
                "guest_mem_total_bytes": stat.mem_total_bytes if stat else None,
                "guest_mem_available_bytes": stat.mem_available_bytes if stat else None,
            }
        )
    return rows


def status(as_json: bool, root: Path | None = None) -> int:
    rows = asyncio.run(_status_rows(root))
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("name", "pid", "vCPUs (QMP)", "online in guest", "max", "hot-adds left"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            *(str(r[k]) for k in ("name", "pid", "vcpus", "guest_online_vcpus", "max_vcpus", "hotplug_adds_left"))
        )
    Console().print(table)
    return 0


def stop(name: str, root: Path | None = None) -> int:
    vm = QemuVm(name, root)
    if not vm.running():
        print(f"{name} is not running", file=sys.stderr)
        return 1
    vm.stop()
    print(f"{name}: stopped")
    return 0


# --- hotplug up ---------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def provision(options: UpOptions, data_dir: Path) -> AsyncIterator[Mapping[str, str]]:
    """``--vms`` real guests (default 6), booted in parallel with 1 vCPU each; stopped when the run ends."""
    root = data_dir / "qemu"
    guests = await _boot_guests(options.vms or DEFAULT_VMS, options.max_vcpus, root)
    try:
        yield {DIR_ENV: str(root)}
    finally:
        for guest in guests:
            await asyncio.to_thread(guest.stop)


async def _boot_guests(count: int, max_vcpus: int, root: Path) -> list[QemuVm]:
    image = await asyncio.to_thread(ensure_image)
    names = [f"vm-{i + 1:02d}" for i in range(count)]
    booted = await asyncio.gather(
        *(asyncio.to_thread(QemuVm.start, name, image, max_vcpus=max_vcpus, vcpus=1, root=root) for name in names),
        return_exceptions=True,
    )
    guests = [g for g in booted if isinstance(g, QemuVm)]
    failures = [g for g in booted if isinstance(g, BaseException)]
    if failures:
        for guest in guests:
            await asyncio.to_thread(guest.stop)
        raise failures[0]
    for guest in guests:
        pid = (await asyncio.to_thread(guest.state)).pid
        print(f"{guest.name}: QEMU guest up (pid {pid}), 1 of {max_vcpus} vCPUs", flush=True)
    return list(guests)


# --- hotplug qemu ... ---------------------------------------------------------------------------------------------


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    from hotplug.cli.hypervisors import guest_commands

    qemu = sub.add_parser("qemu", help="real QEMU guests with live vCPU hot-plug (TCG)")
    qsub = qemu.add_subparsers(dest="qemu_command", required=True)
    started = guest_commands(
        qsub,
        _reported(
            lambda a: start(a.name, a.max_vcpus, a.vcpus, a.memory, max_memory_mb=a.max_memory, balloon=a.balloon)
        ),
        _reported(lambda a: set_vcpus(a.name, a.vcpus)),
        _reported(lambda a: load(a.name, a.busy)),
        start="boot a guest (the image is built on first use)",
        resize="resize a guest now",
        load="run N busy loops in the guest (0 stops them)",
    )
    started.add_argument(
        "--max-memory",
        type=mebibytes,
        default=None,
        metavar="SIZE",
        help="the most memory the guest may grow to (e.g. 2GiB): adds a virtio-mem device of SIZE − --memory "
        "(default: none, the guest keeps its boot RAM)",
    )
    started.add_argument(
        "--balloon",
        action="store_true",
        help="add a virtio-balloon (deflate-on-oom, free-page reporting): trims boot RAM where there is no virtio-mem",
    )
    qstatus = add_command(
        qsub,
        "status",
        _reported(lambda a: status(a.json)),
        help="every guest: vCPUs as QMP sees them and as the guest does",
    )
    qstatus.add_argument("--json", action="store_true")
    qstop = add_command(qsub, "stop", _reported(lambda a: stop(a.name)))
    qstop.add_argument("name")


def _reported(work: Handler) -> Handler:
    """The QEMU commands' own failures: one line and exit 1, as QEMU's tools do."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return work(args)
        except (QemuError, ImageError) as exc:
            print(f"hotplug qemu {args.qemu_command}: {exc}", file=sys.stderr)
            return 1

    return handler


ORDER = 30

HYPERVISOR: Hypervisor[Any] = Hypervisor(
    name="qemu",
    summary=f"qemu: --vms real guests (default {DEFAULT_VMS}) booted for the run, each up to --max-vcpus",
    vms=f"guests to boot (default {DEFAULT_VMS})",
    provision=provision,
    admin=register,
)
