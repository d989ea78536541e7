"""Collector source ``qemu``: the QEMU guests ``hotplug qemu`` runs, measured from the host.

Busy time per vCPU is its host thread's CPU time (thread ids from QMP ``query-cpus-fast`` on the monitoring
socket): it is what each vCPU received, and under TCG the guest's own load figures say only what it wanted.
Pressure comes from the guest's report: runnable tasks beyond its online CPUs (the STAT line's
``running`` counts the guest's own stats reader, which is discounted). Files (state.json, /proc, the guest's
control log) are read in a worker thread, off the event loop.

Memory (a VM started with virtio-mem or a balloon; None for one without) is QEMU's sizes, read by the very function
the driver's ``read_memory`` uses (``shared.qemu.memview``: ``query-memory-devices``, ``query-balloon``), so the
size in a sample is the size the actuator checks a command against, with the guest's MemTotal, MemAvailable and
swap-in from its STAT line. It is asked on the monitoring socket, after the vCPUs and within ``MEMORY_TIMEOUT_S``:
the control socket is held by a resize (an unplug waits up to 5 s on it), and a memory answer that is late leaves
memory out of that round rather than holding the VM's CPU reading back.

The host is this machine (``os.cpu_count()`` CPUs, ``MemTotal`` of ``/proc/meminfo``: ``shared.host_memory``) with
its running guests' vCPUs and memory; host wait is the run-queue wait of their vCPU threads (schedstat), the sign of
more runnable vCPUs than cores. A guest's memory is what the round's read found (no query of its own): the larger of
its size and the size last asked for, its boot RAM without a memory device (``shared.qemu.memview.committed_bytes``,
as the ``qemu`` driver's host view counts it). A guest that could not be read this round keeps the vCPU count and
memory it last had: it still holds them. While a running guest's memory was never known (a memory answer late from
its first round on, a state file of an older version), the host's memory is not reported: a committed sum without it
would say the host has room it does not have.

Pressure between the rounds (``watch_pressure``): the test guest's PSI lines, followed in each running guest's
control log (``services.collector.sources.psi_lines``).
The line also gives the guest's runnable tasks as it was said (``running=``), and the round's pressure is counted
from the latest line that gives them (``shared.qemu.vm.latest_running``): on an urgent round that is the PSI line,
said as the load came, where the STAT line may be a second old and show none of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from qemu.qmp import QMPClient

from services.collector.sources.base import HostReading, Reading
from services.collector.sources.guest import RunQueueIntegral
from services.collector.sources.guest_memory import qemu_counters
from services.collector.sources.psi_lines import PsiLogWatch
from services.collector.sources.threads import read_threads
from shared.clock import Clock
from shared.host_memory import host_memory, read_host_memory
from shared.qemu.memview import UNREADABLE, MemorySizes, committed_bytes, has_memory_device, query_sizes
from shared.qemu.vm import QemuError, QemuVm, VmState, running_vms

log = logging.getLogger(__name__)

# The monitor answers a query in milliseconds; a second is a QEMU busy elsewhere, and the round goes on without it.
MEMORY_TIMEOUT_S = 1.0


async def memory_sizes(qmp: QMPClient, vm: str, state: VmState) -> MemorySizes | None:
    """QEMU's memory sizes of the VM, or None when it has no memory device or QEMU did not answer in time."""
    if not has_memory_device(state):
        return None
    try:
        return await asyncio.wait_for(query_sizes(qmp, state), MEMORY_TIMEOUT_S)
    except UNREADABLE as exc:
        log.warning("QEMU VM %s: memory left out of this round: %s", vm, exc or type(exc).__name__)
        return None


class QemuSource:
    name = "qemu"

    def __init__(self, clock: Clock, root: Path | None = None) -> None:
        self.clock = clock
        self.root = root
        self._pressure: dict[str, RunQueueIntegral] = {}
        self._online: dict[str, int] = {}  # each running guest's vCPUs, as last read
        self._memory: dict[str, int] = {}  # each running guest's memory (committed_bytes), as last known
        self._running: list[str] = []
        self._host_memory: int | None = None
        self._wait: dict[str, float] = {}  # each vCPU thread's run-queue wait this round
        self._read_at: float | None = None

    async def _read_vm(self, vm: QemuVm) -> Reading | None:
        state = await asyncio.to_thread(vm.state)
        async with vm.qmp(monitor=True) as qmp:
            cpus = cast(list[dict[str, Any]], await qmp.execute("query-cpus-fast"))
            sizes = await memory_sizes(qmp, vm.name, state)
        threads = {t.tid: t for t in await asyncio.to_thread(read_threads, state.pid) or []}
        now = self.clock.now()
        per_vcpu = {
            f"{c['cpu-index']:04d}-{c['thread-id']}": threads[c["thread-id"]].cpu_seconds
            for c in cpus
            if c.get("thread-id") in threads
        }
        self._online[vm.name] = len(cpus)
        held = committed_bytes(state, sizes)
        if held is not None:
            self._memory[vm.name] = held
        self._wait.update(
            {
                f"{vm.name}:{c['thread-id']}": threads[c["thread-id"]].wait_seconds
                for c in cpus
                if c.get("thread-id") in threads
            }
        )
        if not per_vcpu:
            return None
        stat, running = await asyncio.to_thread(vm.guest_reading)
        waiting = None
        if running is not None:
            # The latest line's count: a PSI line's on an urgent round (said as the load came), else the STAT
            # line's. Either counts its own reader (awk, or the watcher's shell): one is discounted.
            online = len(stat.online) if stat is not None else len(cpus)
            integral = self._pressure.setdefault(vm.name, RunQueueIntegral())
            waiting = integral.add(now, max(0, running - 1 - online))
        return Reading(
            vm=vm.name,
            time=now,
            online_vcpus=len(cpus),
            min_vcpus=1,
            max_vcpus=state.max_vcpus,
            cpu_seconds=sum(per_vcpu.values()),
            per_vcpu_seconds=per_vcpu,
            waiting_core_seconds=waiting,
            memory=qemu_counters(sizes, stat),
        )

    async def read(self) -> list[Reading]:
        readings = []
        running = await asyncio.to_thread(running_vms, self.root)
        self._online = {vm.name: self._online[vm.name] for vm in running if vm.name in self._online}
        self._memory = {vm.name: self._memory[vm.name] for vm in running if vm.name in self._memory}
        self._running = [vm.name for vm in running]
        self._host_memory = await asyncio.to_thread(read_host_memory)
        self._wait = {}
        self._read_at = self.clock.now()
        for vm in running:
            try:
                reading = await self._read_vm(vm)
            except (QemuError, OSError, TimeoutError) as exc:
                log.warning("cannot read QEMU VM %s: %s", vm.name, exc)
                continue
            if reading is not None:
                readings.append(reading)
        return readings

    def watch_pressure(self, fired: Callable[[], None]) -> PsiLogWatch:
        """Follow the running guests' PSI lines (the ones the last read found), calling ``fired`` on each."""
        return PsiLogWatch(lambda: {name: QemuVm(name, self.root).ctl_log for name in self._running}, fired)

    async def host(self) -> HostReading | None:
        """This machine and the guests this round's read found running."""
        if self._read_at is None:
            return None
        memory_bytes, vm_memory = host_memory(self._host_memory, self._running, self._memory)
        return HostReading(
            time=self._read_at,
            cpus=os.cpu_count() or 1,
            vms=dict(self._online),
            host_wait_seconds=dict(self._wait),
            memory_bytes=memory_bytes,
            vm_memory=vm_memory,
        )

    async def close(self) -> None:
        return None
