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
vCPU threads in /proc (no QMP session for them: the control socket may be held by a 5 s unplug); a guest whose threads
cannot be read counts at its maximum. Its memory is this machine's (``MemTotal`` of ``/proc/meminfo``, as the ``qemu``
collector source reads it) and what each guest holds (``shared.qemu.memview.committed_bytes``: the larger of its size
and the size last asked for, its boot RAM without a memory device). A guest with a memory device is asked on its
monitoring socket (never the control one, for the same reason), all guests at once, each within
``HOST_MEMORY_TIMEOUT_S``: nothing else in the view has its size, and a view must not wait long (it is read before
each grow). A guest not read in time, or whose state file records no memory, leaves the whole view without memory
(``services.actuator.drivers.host_memory``), logged.
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
from services.actuator.drivers.host_memory import HostMemory
from shared.host_memory import MEMINFO, read_host_memory
from shared.messages import ErrorCode
from shared.qemu.memory import VMEM_ID
from shared.qemu.memview import UNREADABLE, MemorySizes, committed_bytes, has_memory_device, query_sizes
from shared.qemu.vm import QemuError, QemuVm, VmState, parse_stat, running_vms, vcpu_threads

GUEST_ONLINE_TIMEOUT_S = 10.0
UNPLUG_TIMEOUT_S = 5.0
# A guest's memory for the host view: the monitor answers in milliseconds, but the collector may hold it for a round
# of its own (up to its 1 s memory timeout); past this the view goes without memory rather than hold a grow back.
HOST_MEMORY_TIMEOUT_S = 2.0


_GONE = "gone"  # a guest that stopped while its memory was read
# A monitor not reached (QemuError, OSError), late or not understood (UNREADABLE): the guest's memory is not read.
_UNREAD: tuple[type[Exception], ...] = (QemuError, OSError, *UNREADABLE)


class QemuDriver:
    name = "qemu"

    def __init__(self, root: Path | None = None, meminfo: Path = MEMINFO) -> None:
        self.root = root
        self.meminfo = meminfo
        self._host_memory = HostMemory(self.name)

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

    def _host(self) -> tuple[dict[str, int], list[tuple[QemuVm, VmState]], int | None]:
        """Each running guest's vCPUs and state, and this machine's memory (blocking: run in a worker thread)."""
        vms = {}
        guests = []
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
            guests.append((vm, state))
        return vms, guests, read_host_memory(self.meminfo)

    async def host_view(self) -> HostView:
        vms, guests, memory_bytes = await asyncio.to_thread(self._host)
        held: dict[str, int | None] = {}
        why: dict[str, str] = {}
        for (vm, _), (size, reason) in zip(
            guests, await asyncio.gather(*(self._held(*g) for g in guests)), strict=True
        ):
            if reason == _GONE:
                vms.pop(vm.name, None)  # stopped since the listing: it holds neither cores nor memory
                continue
            held[vm.name] = size
            if reason is not None:
                why[vm.name] = reason
        return self._host_memory.view(os.cpu_count() or 1, vms, memory_bytes, held, why)

    async def _held(self, vm: QemuVm, state: VmState) -> tuple[int | None, str | None]:
        """What the guest holds of the host's memory, or None and why not (``_GONE``: it is no longer running)."""
        if not has_memory_device(state):
            size = committed_bytes(state, None)
            return size, None if size is not None else "its state file records no memory (an older version's)"
        try:
            sizes = await asyncio.wait_for(self._monitor_sizes(vm, state), HOST_MEMORY_TIMEOUT_S)
        except _UNREAD as exc:
            if not await asyncio.to_thread(vm.running):
                return None, _GONE
            if isinstance(exc, TimeoutError):
                return None, f"its monitor did not answer within {HOST_MEMORY_TIMEOUT_S:g} s"
            return None, f"its monitor: {exc or type(exc).__name__}"
        size = committed_bytes(state, sizes)
        return size, None if size is not None else f"QEMU shows no virtio-mem device {VMEM_ID}"

    @staticmethod
    async def _monitor_sizes(vm: QemuVm, state: VmState) -> MemorySizes | None:
        """The guest's memory sizes, asked on its monitoring socket (the collector's reads queue behind, for ms)."""
        async with vm.qmp(monitor=True) as qmp:
            return await query_sizes(qmp, state)

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
                    # The slot is free a moment before the vCPU leaves query-cpus-fast (seen on a loaded machine):
                    # done only once both say so, so a read right after counts what the guest has.
                    cpus = cast(list[dict[str, Any]], await qmp.execute("query-cpus-fast"))
                    if not any(c.get("qom-path") == path for c in cpus):
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
