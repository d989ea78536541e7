"""Collector source ``simulator``: asks the simulated mini-cloud for its counters over NATS."""

from __future__ import annotations

import logging

import msgspec
from nats.aio.client import Client

from services.collector.sources.base import Reading
from shared import subjects
from shared.sim_api import StatsReply

log = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(StatsReply)


class SimulatorSource:
    name = "simulator"

    def __init__(self, nc: Client, host: str, timeout_s: float = 2.0) -> None:
        self.nc = nc
        self.subject = subjects.simulator(host, "stats")
        self.timeout_s = timeout_s

    async def read(self) -> list[Reading]:
        reply = _decoder.decode((await self.nc.request(self.subject, b"{}", timeout=self.timeout_s)).data)
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

    async def close(self) -> None:
        return None
