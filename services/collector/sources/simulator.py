"""Collector source ``simulator``: asks the simulated mini-cloud for its counters over NATS.

One request a round: the reply's running VMs are the readings, and its host (cores, host wait, the queue of jobs
waiting to start) is the host reading. A simulator that models no host is read as a host with as many cores as its
running VMs' maximum vCPUs together.

Each read also keeps the VMs' memory (:meth:`SimulatorSource.memory`: a :class:`MemoryReading` per VM), for the
collector to carry once its samples have room for it.
"""

from __future__ import annotations

import logging

import msgspec
from nats.aio.client import Client

from services.collector.sources.base import HostReading, Reading
from shared import subjects
from shared.sim_api import SimVmCounters, StatsReply

log = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(StatsReply)


class MemoryReading(msgspec.Struct, frozen=True, kw_only=True):
    """One VM's memory at ``time`` (the shared clock), in bytes.

    ``available_bytes`` is MemAvailable (page cache counts as available). ``swap_in_bytes_per_s`` and
    ``psi_memory_some`` (the share of time, 0 to 1, some task stalled on memory) are over the interval since this
    source's previous read of the VM, from the simulator's cumulative ``swap_in_bytes`` and ``stall_seconds``; on a
    VM's first read, over the simulator's last step. ``oom_kills``: the guest's OOM kills since the VM started."""

    vm: str
    time: float
    size_bytes: int
    requested_bytes: int
    min_bytes: int
    max_bytes: int
    used_bytes: int
    cache_bytes: int
    available_bytes: int
    swap_bytes: int
    swap_in_bytes_per_s: float
    psi_memory_some: float
    oom_kills: int
    swap_in_bytes: float
    stall_seconds: float


def memory_reading(counters: SimVmCounters, time: float, before: MemoryReading | None) -> MemoryReading | None:
    """A VM's memory in a stats reply at ``time``, its rates over the interval since ``before``; None when the
    simulator reports no memory for it. Pure."""
    memory = counters.memory
    if memory is None:
        return None
    swap_in_rate, some = memory.swap_in_bytes_per_s_now, memory.psi_memory_some_now
    if before is not None and time > before.time:
        dt = time - before.time
        # a counter that went back (a VM of the same name started again) gives no interval: keep the last step's
        if memory.swap_in_bytes >= before.swap_in_bytes and memory.stall_seconds >= before.stall_seconds:
            swap_in_rate = (memory.swap_in_bytes - before.swap_in_bytes) / dt
            some = min(1.0, (memory.stall_seconds - before.stall_seconds) / dt)
    return MemoryReading(
        vm=counters.vm,
        time=time,
        size_bytes=memory.size_bytes,
        requested_bytes=memory.requested_bytes,
        min_bytes=memory.min_bytes,
        max_bytes=memory.max_bytes,
        used_bytes=memory.used_bytes,
        cache_bytes=memory.cache_bytes,
        available_bytes=memory.available_bytes,
        swap_bytes=memory.swap_bytes,
        swap_in_bytes_per_s=swap_in_rate,
        psi_memory_some=some,
        oom_kills=memory.oom_kills,
        swap_in_bytes=memory.swap_in_bytes,
        stall_seconds=memory.stall_seconds,
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
    )


class SimulatorSource:
    name = "simulator"

    def __init__(self, nc: Client, host: str, timeout_s: float = 2.0) -> None:
        self.nc = nc
        self.subject = subjects.simulator(host, "stats")
        self.timeout_s = timeout_s
        self._last: StatsReply | None = None
        self._memory: dict[str, MemoryReading] = {}

    async def read(self) -> list[Reading]:
        self._last = None
        reply = _decoder.decode((await self.nc.request(self.subject, b"{}", timeout=self.timeout_s)).data)
        self._last = reply
        memory = {}
        for vm in reply.vms:
            reading = memory_reading(vm, reply.time, self._memory.get(vm.vm))
            if reading is not None:
                memory[vm.vm] = reading
        self._memory = memory
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
            )
            for vm in reply.vms
        ]

    async def host(self) -> HostReading | None:
        """The host as this round's read saw it (None when that read failed)."""
        return None if self._last is None else host_reading(self._last)

    async def memory(self) -> dict[str, MemoryReading]:
        """The running VMs' memory as this round's read saw it (empty when that read failed), by VM name."""
        return {} if self._last is None else dict(self._memory)

    async def close(self) -> None:
        return None
