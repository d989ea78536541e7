"""Actuator driver ``simulator``: resizes VMs of the simulated mini-cloud over NATS request/reply.

Its host view is the simulator's stats reply: the host's cores and its running VMs. A simulator that reports no
host (``StatsReply.host`` None) is taken to have a core for every vCPU its VMs may reach (the sum of their maxima),
so with the default overcommit of 1 no grow is ever held for room, as before hosts had a capacity. The host's memory
is its RAM when the simulator was given one (``--host-memory``), with each VM's memory; else it is unknown, and
memory grows are not held for room.

It moves memory too (``MemoryResizer``): ``read_memory`` is the VM's memory in the stats reply, ``resize_memory`` asks
``hotplug.sim.<host>.memory`` and returns once the simulator took the request; the size then moves in simulated
time as virtio-mem moves it (``services/simulator/vm_memory.py``)."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from services.actuator.drivers.base import DriverError, HostView, MemoryView, VmView
from shared import subjects
from shared.clock import Clock
from shared.messages import ErrorCode
from shared.sim_api import (
    HotplugReply,
    HotplugRequest,
    MemoryResizeReply,
    MemoryResizeRequest,
    SimMemory,
    SimVmCounters,
    StatsReply,
)

_encoder = msgspec.json.Encoder()
_decode_stats = msgspec.json.Decoder(StatsReply)
_hotplug = msgspec.json.Decoder(HotplugReply)
_memory = msgspec.json.Decoder(MemoryResizeReply)


def _code(text: str | None) -> ErrorCode:
    try:
        return ErrorCode(text or "unknown")
    except ValueError:
        return ErrorCode.UNKNOWN


class SimulatorDriver:
    name = "simulator"

    def __init__(self, nc: Client, host: str, clock: Clock, hotplug_timeout_s: float = 30.0) -> None:
        self.nc = nc
        self.host = host
        self.clock = clock
        self.hotplug_timeout_s = hotplug_timeout_s

    async def _request(self, op: str, payload: bytes, wait_s: float) -> bytes:
        try:
            return (await self.nc.request(subjects.simulator(self.host, op), payload, timeout=wait_s)).data
        except (NatsTimeout, TimeoutError) as exc:
            raise DriverError(ErrorCode.TIMEOUT, f"simulator did not answer {op} in {wait_s:.1f} s") from exc
        except NoRespondersError as exc:
            raise DriverError(ErrorCode.VM_NOT_RUNNING, f"no simulator is running on host {self.host}") from exc

    async def _stats(self) -> StatsReply:
        return _decode_stats.decode(await self._request("stats", b"{}", 5.0))

    async def _counters(self, vm: str) -> SimVmCounters:
        for counters in (await self._stats()).vms:
            if counters.vm == vm:
                return counters
        raise DriverError(ErrorCode.VM_NOT_FOUND, f"Could not find a registered machine named '{vm}'")

    async def read(self, vm: str) -> VmView:
        counters = await self._counters(vm)
        return VmView(
            vm=vm,
            online_vcpus=counters.online_vcpus,
            min_vcpus=counters.min_vcpus,
            max_vcpus=counters.max_vcpus,
        )

    async def read_memory(self, vm: str) -> MemoryView:
        """The VM's memory now: its size and limits, and the guest's MemTotal (its size) and MemAvailable."""
        memory = (await self._counters(vm)).memory
        if memory is None:
            raise DriverError(ErrorCode.HOTPLUG_DISABLED, f"the simulator models no memory for '{vm}'")
        return memory_view(vm, memory)

    async def resize_memory(self, vm: str, target_bytes: int) -> None:
        """Ask for ``target_bytes``; returns once the simulator took it (out-of-bounds past its limits or off its
        2 MiB block, host-full when the host's memory is limited and full, vm-not-found)."""
        payload = _encoder.encode(MemoryResizeRequest(vm=vm, target_bytes=target_bytes))
        reply = _memory.decode(await self._request("memory", payload, 5.0))
        if not reply.ok:
            raise DriverError(_code(reply.error_code), reply.error or "simulator refused")

    async def host_view(self) -> HostView:
        reply = await self._stats()
        cores = reply.host.cores if reply.host is not None else sum(c.max_vcpus for c in reply.vms)
        return HostView(
            cpus=max(1, cores),
            vms={c.vm: c.online_vcpus for c in reply.vms},
            memory_bytes=reply.host.memory_bytes if reply.host is not None else None,
            # a VM the simulator models no memory for holds none
            vm_memory={c.vm: c.memory.committed_bytes for c in reply.vms if c.memory is not None},
        )

    async def _hotplug_op(self, vm: str, op: str) -> None:
        payload = _encoder.encode(HotplugRequest(vm=vm, op=op))  # type: ignore[arg-type]
        reply = _hotplug.decode(await self._request("hotplug", payload, self.hotplug_timeout_s))
        if not reply.ok:
            raise DriverError(_code(reply.error_code), reply.error or "simulator refused")

    async def plug(self, vm: str) -> None:
        await self._hotplug_op(vm, "plug")

    async def unplug(self, vm: str) -> None:
        await self._hotplug_op(vm, "unplug")

    async def close(self) -> None:
        return None


def memory_view(vm: str, memory: SimMemory) -> MemoryView:
    """A simulated VM's memory as this driver reports it: the simulator's figures, with the guest's MemTotal its
    size. Pure (the pool benchmark takes its VMs' views through it too)."""
    return MemoryView(
        vm=vm,
        size_bytes=memory.size_bytes,
        requested_bytes=memory.requested_bytes,
        min_bytes=memory.min_bytes,
        max_bytes=memory.max_bytes,
        step_bytes=memory.step_bytes,
        method="simulated",
        guest_total_bytes=memory.size_bytes,
        guest_available_bytes=memory.available_bytes,
    )
