"""Actuator driver ``virtualbox``: ``VBoxManage controlvm <vm> plugcpu|unplugcpu <id>``.

To grow, plug the lowest free CPU id; to shrink, unplug the highest attached one; never CPU 0. The attached
set comes from the VM's settings file, re-read before every step, and each step is verified there.

The host view is this machine's CPUs (VBoxManage drives the local VBoxSVC; ``list hostinfo`` is not in the VirtualBox
notes the stand-in follows) and every VM of ``list runningvms`` (paused ones too), counted by its attached CPUs (all
its CPUs when hot-plug is off). A VM that stops between the listing and its ``showvminfo`` is left out. Its memory is
this machine's (``MemTotal`` of ``/proc/meminfo``, ``shared.host_memory``: VBoxSVC runs its VMs here) and what each VM
holds, from the same ``showvminfo`` (no call of its own): its RAM less the configured balloon, as ``read_memory``
says it (the balloon as asked is all VirtualBox shows: the size and the size asked for are one figure); all its RAM
without a balloon. A VM whose ``showvminfo`` shows no ``memory=`` leaves the view without memory
(``services.actuator.drivers.host_memory``), logged.

Memory moves through the balloon only (``controlvm <vm> guestmemoryballoon <MB>``; VirtualBox has no memory
hot-plug): size = the VM's RAM − the configured balloon (``shared.virtualbox.balloon_sizes``, which the collector's
source samples too), in 1 MiB steps, never above the RAM the VM booted with. The floor is the driver's: 256 MiB or a
quarter of the RAM, whichever is more, and never under what VirtualBox allows (a balloon below 90 % of the RAM). The
balloon needs the Guest Additions: without them (``GuestAdditionsRunLevel=0``) VirtualBox takes the value and
nothing moves, so a resize is refused as ``hotplug-disabled``. ``showvminfo`` shows the configured balloon, not the
guest's progress (only the ``Guest/RAM/Usage/Balloon`` metric does), so the size is the request as VirtualBox took
it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from services.actuator.drivers.base import DriverError, HostView, MemoryView, VmView
from services.actuator.drivers.host_memory import HostMemory
from shared.host_memory import MEMINFO, read_host_memory
from shared.messages import ErrorCode
from shared.units import MIB, format_size
from shared.virtualbox import VBoxError, VBoxManage, VmInfo, balloon_floor_mb, balloon_sizes


class VirtualBoxDriver:
    name = "virtualbox"

    def __init__(self, vbox: VBoxManage | None = None, meminfo: Path = MEMINFO) -> None:
        self.vbox = vbox or VBoxManage()
        self.meminfo = meminfo
        self._host_memory = HostMemory(self.name)

    async def _info(self, vm: str) -> VmInfo:
        info = await self._running(vm)
        if not info.hotplug:
            raise DriverError(
                ErrorCode.HOTPLUG_DISABLED,
                f"CPU hotplug is not enabled on '{vm}': run hotplug vbox prepare while it is powered off",
            )
        return info

    async def read(self, vm: str) -> VmView:
        info = await self._info(vm)
        return VmView(vm=vm, online_vcpus=len(info.attached), min_vcpus=1, max_vcpus=min(info.cpus, 32))

    async def host_view(self) -> HostView:
        vms = {}
        held: dict[str, int | None] = {}
        try:
            running = await self.vbox.list("runningvms")
            for name, uuid in running:
                try:
                    info = await self.vbox.info(uuid)
                except VBoxError as exc:
                    if exc.code in (ErrorCode.VM_NOT_FOUND, ErrorCode.VM_NOT_RUNNING):
                        continue  # gone since the listing
                    raise
                vms[name] = len(info.attached)  # a paused VM holds its CPUs too, and its memory
                held[name] = balloon_sizes(info).size_bytes if info.memory_mb > 0 else None
        except VBoxError as exc:
            raise DriverError(exc.code, exc.message) from exc
        memory_bytes = await asyncio.to_thread(read_host_memory, self.meminfo)
        why = {name: "showvminfo gave no memory=" for name, size in held.items() if size is None}
        return self._host_memory.view(os.cpu_count() or 1, vms, memory_bytes, held, why)

    async def plug(self, vm: str) -> None:
        info = await self._info(vm)
        free = [cpu for cpu in range(1, min(info.cpus, 32)) if cpu not in info.attached]
        if not free:
            raise DriverError(
                ErrorCode.CPU_ID_OUT_OF_RANGE,
                f"no free CPU id on '{vm}': all {info.cpus} (at most 32 live) are attached",
            )
        try:
            await self.vbox.plugcpu(vm, free[0])
        except VBoxError as exc:
            raise DriverError(exc.code, exc.message) from exc

    async def unplug(self, vm: str) -> None:
        info = await self._info(vm)
        removable = [cpu for cpu in info.attached if cpu != 0]
        if not removable:
            raise DriverError(ErrorCode.CPU0, f"only CPU 0 is attached to '{vm}', and it cannot be removed")
        try:
            await self.vbox.unplugcpu(vm, max(removable))
        except VBoxError as exc:
            raise DriverError(exc.code, exc.message) from exc

    async def _running(self, vm: str) -> VmInfo:
        try:
            info = await self.vbox.info(vm)
        except VBoxError as exc:
            raise DriverError(exc.code, exc.message) from exc
        if not info.running:
            raise DriverError(
                ErrorCode.VM_NOT_RUNNING, f"Machine '{vm}' is not currently running (state {info.state or 'unknown'})"
            )
        return info

    async def read_memory(self, vm: str) -> MemoryView:
        sizes = balloon_sizes(await self._running(vm))
        return MemoryView(
            vm=vm,
            size_bytes=sizes.size_bytes,
            requested_bytes=sizes.size_bytes,
            min_bytes=sizes.min_bytes,
            max_bytes=sizes.max_bytes,
            step_bytes=MIB,
            method="balloon",
        )

    async def resize_memory(self, vm: str, target_bytes: int) -> None:
        info = await self._running(vm)
        floor = balloon_floor_mb(info.memory_mb) * MIB
        if target_bytes % MIB or not floor <= target_bytes <= info.memory_mb * MIB:
            raise DriverError(
                ErrorCode.OUT_OF_BOUNDS,
                f"'{vm}': {format_size(target_bytes)} is not a whole number of MiB within {format_size(floor)} (the "
                f"balloon's floor) and {info.memory_mb} MiB (its RAM: the balloon only takes from it)",
            )
        if info.additions_run_level == 0:
            raise DriverError(
                ErrorCode.HOTPLUG_DISABLED,
                f"no Guest Additions run in '{vm}' (GuestAdditionsRunLevel=0): its balloon would not move",
            )
        try:
            await self.vbox.guestmemoryballoon(vm, info.memory_mb - target_bytes // MIB)
        except VBoxError as exc:
            raise DriverError(exc.code, exc.message) from exc

    async def close(self) -> None:
        return None
