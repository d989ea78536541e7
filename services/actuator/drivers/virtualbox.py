"""Actuator driver ``virtualbox``: ``VBoxManage controlvm <vm> plugcpu|unplugcpu <id>``.

To grow, plug the lowest free CPU id; to shrink, unplug the highest attached one; never CPU 0. The attached
set comes from the VM's settings file, re-read before every step, and each step is verified there.

The host view is this machine's CPUs (VBoxManage drives the local VBoxSVC; ``list hostinfo`` is not in the VirtualBox
notes the stand-in follows) and every VM of ``list runningvms`` (paused ones too), counted by its attached CPUs (all
its CPUs when hot-plug is off). A VM that stops between the listing and its ``showvminfo`` is left out.
"""

from __future__ import annotations

import os

from services.actuator.drivers.base import DriverError, HostView, VmView
from shared.messages import ErrorCode
from shared.virtualbox import VBoxError, VBoxManage, VmInfo


class VirtualBoxDriver:
    name = "virtualbox"

    def __init__(self, vbox: VBoxManage | None = None) -> None:
        self.vbox = vbox or VBoxManage()

    async def _info(self, vm: str) -> VmInfo:
        try:
            info = await self.vbox.info(vm)
        except VBoxError as exc:
            raise DriverError(exc.code, exc.message) from exc
        if not info.running:
            raise DriverError(
                ErrorCode.VM_NOT_RUNNING, f"Machine '{vm}' is not currently running (state {info.state or 'unknown'})"
            )
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
        try:
            running = await self.vbox.list("runningvms")
            for name, uuid in running:
                try:
                    info = await self.vbox.info(uuid)
                except VBoxError as exc:
                    if exc.code in (ErrorCode.VM_NOT_FOUND, ErrorCode.VM_NOT_RUNNING):
                        continue  # gone since the listing
                    raise
                vms[name] = len(info.attached)  # a paused VM holds its CPUs too
        except VBoxError as exc:
            raise DriverError(exc.code, exc.message) from exc
        return HostView(cpus=os.cpu_count() or 1, vms=vms)

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

    async def close(self) -> None:
        return None
