"""Collector source ``simulator``: asks the simulated mini-cloud for its counters over NATS.

One request a round: the reply's running VMs are the readings, and its host (cores, host wait, the queue of jobs
waiting to start, its memory and each VM's when it was given some) is the host reading. A simulator that models no
host is read as a host with as many cores as its running VMs' maximum vCPUs together.

Each reading carries the VM's memory (sizes and cumulative swap-in, stall and OOM counters), which the collector turns
into the sample's memory part.

Pressure between the rounds (``watch_pressure``): the simulator says on ``hotplug.sim.<host>.pressure`` the moment a
simulated guest's PSI trigger fires (``services.simulator.stall``), as the guest agent's kernel wakes it; the watch
subscribes and calls ``fired`` for each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.collector.sources.base import HostReading, MemoryCounters, Reading
from shared import subjects
from shared.sim_api import PSI_WINDOW_S, SimMemory, StatsReply

log = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(StatsReply)


def memory_counters(memory: SimMemory | None) -> MemoryCounters | None:
    """A VM's memory in a stats reply as the collector's counters (None: the simulator reports none). Used is what the
    guest's MemTotal - MemAvailable would say (its kernel's part included). Pure."""
    if memory is None:
        return None
    return MemoryCounters(
        size_bytes=memory.size_bytes,
        min_bytes=memory.min_bytes,
        max_bytes=memory.max_bytes,
        used_bytes=max(0, memory.size_bytes - memory.available_bytes),
        available_bytes=memory.available_bytes,
        swap_in_bytes=memory.swap_in_bytes,
        psi_some_seconds=memory.stall_seconds,
        oom_kills=memory.oom_kills,
    )


def host_reading(reply: StatsReply) -> HostReading:
    """The host in a stats reply. Pure."""
    vms = {vm.vm: vm.online_vcpus for vm in reply.vms}
    host = reply.host
    if host is None:
        return HostReading(time=reply.time, cpus=max(1, sum(vm.max_vcpus for vm in reply.vms)), vms=vms)
    return HostReading(
        time=reply.time,
        cpus=max(1, host.cores),
        vms=vms,
        host_wait_seconds={"host": host.host_wait_core_seconds},
        waiting_vms=host.waiting_vms,
        waiting_vcpus=host.waiting_vcpus,
        next_waiting_vcpus=host.next_waiting_vcpus,
        memory_bytes=host.memory_bytes,
        # a VM the simulator models no memory for holds none
        vm_memory=None
        if host.memory_bytes is None
        else {vm.vm: vm.memory.committed_bytes for vm in reply.vms if vm.memory is not None},
    )


class SimPressureWatch:
    """A subscription to the simulator's pressure events, calling ``fired`` on the loop for each. Closed by ``close``.

    The simulator fires each guest's trigger at most once a window (its default, the agent's: 1 s of its clock); the
    collector's gate takes that window."""

    window_s = PSI_WINDOW_S

    def __init__(self, nc: Client, subject: str, fired: Callable[[], None]) -> None:
        self._fired = fired
        self._sub: Subscription | None = None
        self._closed = False
        # Subscribing is a coroutine and the watch is started from a plain call on the running loop.
        self._task = asyncio.ensure_future(self._subscribe(nc, subject))

    async def _subscribe(self, nc: Client, subject: str) -> None:
        sub = await nc.subscribe(subject, cb=self._on_event)
        if self._closed:
            await sub.unsubscribe()
            return
        self._sub = sub

    async def _on_event(self, msg: Msg) -> None:
        self._fired()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        if self._sub is not None:
            sub, self._sub = self._sub, None
            self._task = asyncio.ensure_future(sub.unsubscribe())


class SimulatorSource:
    name = "simulator"

    def __init__(self, nc: Client, host: str, timeout_s: float = 2.0) -> None:
        self.nc = nc
        self.subject = subjects.simulator(host, "stats")
        self.pressure_subject = subjects.simulator_pressure(host)
        self.timeout_s = timeout_s
        self._last: StatsReply | None = None

    async def read(self) -> list[Reading]:
        self._last = None
        reply = _decoder.decode((await self.nc.request(self.subject, b"{}", timeout=self.timeout_s)).data)
        self._last = reply
        return [
            Reading(
                vm=vm.vm,
                time=reply.time,
                online_vcpus=vm.online_vcpus,
                min_vcpus=vm.min_vcpus,
                max_vcpus=vm.max_vcpus,
                cpu_seconds=vm.cpu_seconds,
                per_vcpu_seconds={f"{i:04d}": s for i, s in enumerate(vm.per_vcpu_seconds[: vm.online_vcpus])},
                waiting_core_seconds=vm.waiting_core_seconds,
                memory=memory_counters(vm.memory),
            )
            for vm in reply.vms
        ]

    async def host(self) -> HostReading | None:
        """The host as this round's read saw it (None when that read failed)."""
        return None if self._last is None else host_reading(self._last)

    def watch_pressure(self, fired: Callable[[], None]) -> SimPressureWatch:
        """Subscribe to the simulated guests' PSI triggers, calling ``fired`` on each."""
        return SimPressureWatch(self.nc, self.pressure_subject, fired)

    async def close(self) -> None:
        return None
