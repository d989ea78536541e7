"""``hotplug qemu start|set|load|status|stop``: real QEMU guests with live vCPU hot-plug."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, cast

from hotplug.resize import resize
from services.actuator.drivers.qemu import QemuDriver
from shared.qemu.image import ensure_image
from shared.qemu.vm import QemuError, QemuVm, running_vms


def start(name: str, max_vcpus: int, vcpus: int, memory_mb: int, root: Path | None = None) -> int:
    vm = QemuVm.start(name, ensure_image(), max_vcpus=max_vcpus, vcpus=vcpus, memory_mb=memory_mb, root=root)
    print(f"{name}: running (pid {vm.state().pid}), {vcpus} of {max_vcpus} vCPUs; guest control: {vm.ctl_path}")
    return 0


def set_vcpus(name: str, target: int, root: Path | None = None) -> int:
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
