"""Drivers' host views (services/actuator/drivers/base.py): the simulator's from its stats reply, and a driver
without one (an older plug-in) leaves the host unknown. The real hypervisors' are tested against them (system tier)
and the VirtualBox stand-in (component tier)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import msgspec

from services.actuator.drivers.base import HostView, host_aware
from services.actuator.drivers.simulator import SimulatorDriver
from shared.clock import Clock
from shared.sim_api import SimHost, SimVmCounters, StatsReply
from tests.stubs import FakeDriver, FakeHostDriver


@dataclass
class Reply:
    data: bytes


@dataclass
class StatsClient:
    """Answers every request with one stats reply, as the simulator does."""

    reply: StatsReply

    async def request(self, subject: str, payload: bytes, timeout: float) -> Reply:
        return Reply(msgspec.json.encode(self.reply))


def counters(vm: str, online: int, maximum: int) -> SimVmCounters:
    return SimVmCounters(
        vm=vm,
        online_vcpus=online,
        min_vcpus=1,
        max_vcpus=maximum,
        cpu_seconds=0.0,
        per_vcpu_seconds=[0.0] * maximum,
        waiting_core_seconds=0.0,
        profile="idle",
    )


async def host_of(reply: StatsReply) -> HostView:
    return await SimulatorDriver(cast(Any, StatsClient(reply)), "h", Clock()).host_view()


async def test_the_simulators_host_is_its_cores_and_its_running_vms() -> None:
    vms = [counters("a", 2, 4), counters("b", 3, 8)]
    view = await host_of(StatsReply(time=0.0, vms=vms, host=SimHost(cores=6, capacity_vcpus=6)))
    assert view == HostView(cpus=6, vms={"a": 2, "b": 3})
    # a simulator that reports no host has a core for every vCPU its VMs may reach: nothing is held, as before
    assert (await host_of(StatsReply(time=0.0, vms=vms))).cpus == 12


def test_a_driver_without_a_host_view_leaves_the_host_unknown() -> None:
    assert host_aware(FakeDriver()) is None
    driver = FakeHostDriver()
    assert host_aware(driver) is driver
