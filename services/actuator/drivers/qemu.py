"""Actuator driver ``qemu``: vCPU hot-plug over QMP (``device_add``/``device_del`` of CPU devices).

Plug the lowest free slot of ``query-hotpluggable-cpus``; done when the guest itself reports the CPU online
(a hypervisor-side count alone is not enough). Unplug the highest hot-added CPU; under TCG QEMU never sends
``DEVICE_DELETED`` for the CPU itself, so completion is its slot becoming free. The lifetime hot-add budget
(``maxcpus`` − boot vCPUs under TCG) is counted and refused with a clear error before QEMU would abort.

The VM's files (state.json and its lock, the guest's control log, /proc) are read in a worker thread, never on the
event loop: the lock may be held by ``hotplug qemu set``, and a slow disk must not stall other VMs' commands.

Memory (``read_memory``/``resize_memory``: virtio-mem, or a balloon where there is none) is
``services.actuator.drivers.qemu_memory``'s.

The host view is this machine's CPUs and every guest running under the driver's directory, each counted by its
vCPU threads in /proc (no QMP session: the control socket may be held by a 5 s unplug); a guest whose threads
cannot be read counts at its maximum.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import msgspec
from qemu.qmp import ExecuteError, QMPClient

from services.actuator.drivers import qemu_memory
from services.actuator.drivers.base import DriverError, HostView, MemoryView, VmView
from shared.messages import ErrorCode
from shared.qemu.vm import QemuError, QemuVm, VmState, parse_stat, running_vms, vcpu_threads

GUEST_ONLINE_TIMEOUT_S = 10.0
UNPLUG_TIMEOUT_S = 5.0


class QemuDriver:
    name = "qemu"

    def __init__(self, root: Path | None = None) -> None:
        self.root = root

    def _find(self, name: str) -> tuple[QemuVm, VmState]:
        try:
            vm = QemuVm(name, self.root)
            state = vm.state()
        except QemuError as exc:
            raise DriverError(ErrorCode.VM_NOT_FOUND, str(exc)) from exc
        if not vm.running():
            raise DriverError(ErrorCode.VM_NOT_RUNNING, f"QEMU VM {name} is not running")
        return vm, state

    async def _vm(self, name: str) -> tuple[QemuVm, VmState]:
        """The running VM called ``name`` and its state.json."""
        return await asyncio.to_thread(self._find, name)

    @staticmethod
    @contextlib.asynccontextmanager
    async def _session(vm: QemuVm) -> AsyncIterator[QMPClient]:
        """A QMP session whose failures are driver errors."""
        try:
            async with vm.qmp() as qmp:
                yield qmp
        except ExecuteError as exc:
            raise DriverError(ErrorCode.UNKNOWN, f"QMP on {vm.name}: {exc}") from exc
        except (QemuError, OSError, TimeoutError) as exc:
            raise DriverError(ErrorCode.VM_NOT_RUNNING, f"QMP on {vm.name}: {exc}") from exc

    async def _execute(self, vm: QemuVm, command: str, arguments: dict[str, Any] | None = None) -> Any:
        async with self._session(vm) as qmp:
            return await qmp.execute(command, arguments)

    async def _cpus(self, vm: QemuVm) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], await self._execute(vm, "query-cpus-fast"))

    async def read(self, vm_name: str) -> VmView:
        vm, state = await self._vm(vm_name)
        cpus = await self._cpus(vm)
        return VmView(vm=vm_name, online_vcpus=len(cpus), min_vcpus=1, max_vcpus=state.max_vcpus)

    def _host(self) -> HostView:
        vms = {}
        try:
            running = running_vms(self.root)
        except (OSError, msgspec.DecodeError) as exc:
            raise DriverError(ErrorCode.UNKNOWN, f"cannot list the QEMU guests: {exc}") from exc
        for vm in running:
            try:
                state = vm.state()
            except (QemuError, OSError, msgspec.DecodeError):
                continue  # stopped since the listing, or its state is unreadable: it holds no known count
            threads = vcpu_threads(state.pid)
            vms[vm.name] = len(threads) if threads else state.max_vcpus
        return HostView(cpus=os.cpu_count() or 1, vms=vms)

    async def host_view(self) -> HostView:
        return await asyncio.to_thread(self._host)

    async def plug(self, vm_name: str) -> None:
        vm, state = await self._vm(vm_name)
        if state.adds_left <= 0:
            raise DriverError(
                ErrorCode.HOTPLUG_BUDGET,
                f"{vm_name} has used all {state.maxcpus - state.boot_vcpus} hot-adds QEMU allows "
                f"it under TCG in one run; restart the VM to plug again",
            )
        slots = cast(list[dict[str, Any]], await self._execute(vm, "query-hotpluggable-cpus"))
        free = sorted(
            (s for s in slots if "qom-path" not in s and s["props"].get("core-id", 0) < state.max_vcpus),
            key=lambda s: (s["props"].get("socket-id", 0), s["props"].get("core-id", 0)),
        )
        if not free:
            raise DriverError(
                ErrorCode.CPU_ID_OUT_OF_RANGE, f"{vm_name} has no free CPU slot below its maximum of {state.max_vcpus}"
            )
        expected = len(await self._cpus(vm)) + 1

        def count_add(s: VmState) -> None:
            s.adds += 1

        # Counted before the call: if QEMU accepts it and we die, the budget must still know.
        state = await asyncio.to_thread(vm.update_state, count_add)
        slot = free[0]
        mark = await asyncio.to_thread(vm.guest_log_size)
        await self._execute(vm, "device_add", {"driver": slot["type"], "id": f"hp{state.adds}", **slot["props"]})
        deadline = time.monotonic() + GUEST_ONLINE_TIMEOUT_S
        while time.monotonic() < deadline:
            # the guest's uevent handler says "HP onlined cpuN" at once; its STAT line comes once a second
            news = await asyncio.to_thread(vm.guest_lines_since, mark)
            if any(line.startswith("HP onlined") for line in news):
                return
            stats = [st for st in map(parse_stat, news) if st is not None]
            if stats and len(stats[-1].online) >= expected:
                return
            await asyncio.sleep(0.01)
        raise DriverError(
            ErrorCode.NOT_VERIFIED,
            f"QEMU added the CPU but the guest of {vm_name} did not report it "
            f"online within {GUEST_ONLINE_TIMEOUT_S:.0f} s",
        )

    async def unplug(self, vm_name: str) -> None:
        vm, _ = await self._vm(vm_name)
        cpus = await self._cpus(vm)
        hot = [c for c in cpus if str(c.get("qom-path", "")).startswith("/machine/peripheral/")]
        if not hot:
            raise DriverError(ErrorCode.CPU0, f"{vm_name} has only its boot vCPUs; they cannot be removed")
        victim = max(hot, key=lambda c: int(c["cpu-index"]))
        path = str(victim["qom-path"])
        # one session for the request and the wait: the eject's ACPI events arrive while we poll
        async with self._session(vm) as qmp:
            await qmp.execute("device_del", {"id": path.rsplit("/", 1)[-1]})
            deadline = time.monotonic() + UNPLUG_TIMEOUT_S
            while time.monotonic() < deadline:
                slots = cast(list[dict[str, Any]], await qmp.execute("query-hotpluggable-cpus"))
                if not any(s.get("qom-path") == path for s in slots):
                    return
                await asyncio.sleep(0.02)
        raise DriverError(
            ErrorCode.TIMEOUT, f"{vm_name}: the guest did not release {path} within {UNPLUG_TIMEOUT_S:.0f} s"
        )

    async def read_memory(self, vm_name: str) -> MemoryView:
        vm, state = await self._vm(vm_name)
        qemu_memory.check_enabled(vm_name, state)
        async with self._session(vm) as qmp:
            return await qemu_memory.read(qmp, vm, state)

    async def resize_memory(self, vm_name: str, target_bytes: int) -> None:
        vm, state = await self._vm(vm_name)
        qemu_memory.check_enabled(vm_name, state)
        async with self._session(vm) as qmp:
            await qemu_memory.resize(qmp, vm, state, target_bytes)

    async def close(self) -> None:
        return None
