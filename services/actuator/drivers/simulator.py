"""Actuator driver ``simulator``: resizes VMs of the simulated mini-cloud over NATS request/reply.

Its host view is the simulator's stats reply: the host's cores and its running VMs. A simulator that reports no
host (``StatsReply.host`` None) is taken to have a core for every vCPU its VMs may reach (the sum of their maxima),
so with the default overcommit of 1 no grow is ever held for room, as before hosts had a capacity."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from services.actuator.drivers.base import DriverError, HostView, VmView
from shared import subjects
from shared.clock import Clock
from shared.messages import ErrorCode
from shared.sim_api import HotplugReply, HotplugRequest, StatsReply

_encoder = msgspec.json.Encoder()
_decode_stats = msgspec.json.Decoder(StatsReply)
_hotplug = msgspec.json.Decoder(HotplugReply)


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

    async def read(self, vm: str) -> VmView:
        reply = await self._stats()
        for counters in reply.vms:
            if counters.vm == vm:
                return VmView(
                    vm=vm,
                    online_vcpus=counters.online_vcpus,
                    min_vcpus=counters.min_vcpus,
                    max_vcpus=counters.max_vcpus,
                )
        raise DriverError(ErrorCode.VM_NOT_FOUND, f"Could not find a registered machine named '{vm}'")

    async def host_view(self) -> HostView:
        reply = await self._stats()
        cores = reply.host.cores if reply.host is not None else sum(c.max_vcpus for c in reply.vms)
        return HostView(cpus=max(1, cores), vms={c.vm: c.online_vcpus for c in reply.vms})

    async def _hotplug_op(self, vm: str, op: str) -> None:
        payload = _encoder.encode(HotplugRequest(vm=vm, op=op))  # type: ignore[arg-type]
        reply = _hotplug.decode(await self._request("hotplug", payload, self.hotplug_timeout_s))
        if not reply.ok:
            try:
                code = ErrorCode(reply.error_code or "unknown")
            except ValueError:
                code = ErrorCode.UNKNOWN
            raise DriverError(code, reply.error or "simulator refused")

    async def plug(self, vm: str) -> None:
        await self._hotplug_op(vm, "plug")

    async def unplug(self, vm: str) -> None:
        await self._hotplug_op(vm, "unplug")

    async def close(self) -> None:
        return None
