"""Memory in the simulator service, against a real nats-server, asked by its real clients: the actuator's
``simulator`` driver reads and resizes memory (``MemoryResizer``), the collector's ``simulator`` source reads the
memory figures. A resize is answered once taken and the size moves in simulated time; a request past the device's
limits is refused with the hypervisor's code; a shrink past what the guest asks ends in its OOM killer.

The simulator runs on the wall clock (or a faster one, from its own start); the tests poll, never sleep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import pytest

from hotplug.harness.poll import eventually
from services.actuator.drivers.base import DriverError, memory_resizer
from services.actuator.drivers.simulator import SimulatorDriver
from services.collector.sources.base import MemoryCounters
from services.collector.sources.simulator import SimulatorSource
from services.simulator.service import SimulatorConfig, SimulatorMetrics, SimulatorService
from services.simulator.vm_memory import MEMORY_STEP_BYTES
from shared.clock import make_clock
from shared.messages import ErrorCode
from shared.runtime import ServiceContext
from shared.units import GIB
from tests.component.conftest import InProcess, Serve
from tests.component.test_simulator_service import HOST, driver, source  # the same clients, on the same host

__all__ = ["driver", "source"]  # fixtures, used by name
VM = "vm-01"
OTHER = "vm-02"

Start = Callable[[SimulatorConfig, float], Awaitable[InProcess[SimulatorMetrics]]]


@pytest.fixture
def start_simulator(serve: Serve) -> Start:
    async def start(config: SimulatorConfig, speed: float) -> InProcess[SimulatorMetrics]:
        async def body(ctx: ServiceContext[SimulatorMetrics]) -> None:
            ctx.options = dataclasses.replace(ctx.options, clock=make_clock(speed, None))
            await SimulatorService(ctx, config).run()

        service = await serve(SimulatorMetrics("simulator"), body, HOST)
        await eventually(
            lambda: service.count("hotplug_sim_vm_online_vcpus") > 0, timeout=10, what="the simulator serving"
        )
        return service

    return start


async def refused(operation: Awaitable[object]) -> DriverError:
    with pytest.raises(DriverError) as info:
        await operation
    return info.value


async def memory_of(source: SimulatorSource, vm: str) -> MemoryCounters:
    readings = {reading.vm: reading.memory for reading in await source.read()}
    memory = readings[vm]
    assert memory is not None, f"{vm} has no memory figures"
    return memory


async def test_the_driver_reads_and_resizes_memory_and_the_source_reads_the_guests_figures(
    start_simulator: Start, driver: SimulatorDriver, source: SimulatorSource
) -> None:
    simulator = await start_simulator(SimulatorConfig(vms=2, seed=1, hotplug_delay_s=0.0), 1.0)
    assert memory_resizer(driver) is driver  # the actuator sees a driver that moves memory
    # generated VMs ask 2 GiB per requested vCPU (2 and 4), boot with it and may give back down to 1 GiB
    view = await driver.read_memory(OTHER)
    assert (view.size_bytes, view.requested_bytes, view.min_bytes, view.max_bytes) == (8 * GIB, 8 * GIB, GIB, 8 * GIB)
    assert (view.step_bytes, view.method, view.guest_total_bytes) == (MEMORY_STEP_BYTES, "simulated", 8 * GIB)
    assert view.guest_available_bytes is not None and 0 < view.guest_available_bytes < 8 * GIB
    assert view.guest_used_bytes is not None and view.guest_used_bytes > 0

    first = await memory_of(source, VM)
    assert (first.size_bytes, first.max_bytes, first.min_bytes) == (4 * GIB, 4 * GIB, GIB)
    assert first.used_bytes is not None and first.available_bytes is not None
    assert first.used_bytes > 0 and first.available_bytes + first.used_bytes == first.size_bytes  # kernel's in used
    assert (first.swap_in_bytes, first.psi_some_seconds, first.oom_kills) == (0.0, 0.0, 0)

    # a shrink is answered once taken; the guest gives back about a GiB a second after it
    await driver.resize_memory(OTHER, 6 * GIB)
    taken = await driver.read_memory(OTHER)
    assert taken.requested_bytes == 6 * GIB and 6 * GIB <= taken.size_bytes <= 8 * GIB

    async def size_is(vm: str, size: int) -> bool:
        return (await driver.read_memory(vm)).size_bytes == size

    await eventually(lambda: size_is(OTHER, 6 * GIB), timeout=10, what="the shrink to 6 GiB")
    await driver.resize_memory(OTHER, 8 * GIB)
    await eventually(lambda: size_is(OTHER, 8 * GIB), timeout=10, what="the grow back to 8 GiB")
    assert simulator.count("hotplug_sim_memory_resizes_total", outcome="ok") == 2

    # what the device cannot do is refused with the hypervisor's code, and changes nothing
    for target in (8 * GIB + MEMORY_STEP_BYTES, GIB - MEMORY_STEP_BYTES, 6 * GIB + 1):
        assert (await refused(driver.resize_memory(OTHER, target))).code is ErrorCode.OUT_OF_BOUNDS
    assert simulator.count("hotplug_sim_memory_resizes_total", outcome=ErrorCode.OUT_OF_BOUNDS.value) == 3
    assert (await refused(driver.resize_memory("ghost", GIB))).code is ErrorCode.VM_NOT_FOUND
    assert (await refused(driver.read_memory("ghost"))).code is ErrorCode.VM_NOT_FOUND
    assert (await driver.read_memory(OTHER)).requested_bytes == 8 * GIB
    await eventually(
        lambda: simulator.count("hotplug_sim_vm_memory_bytes", vm=OTHER, kind="size") == 8 * GIB,
        timeout=10,
        what="the size gauge",
    )


async def test_a_shrink_below_what_the_guest_asks_swaps_then_ends_in_its_oom_killer(
    start_simulator: Start, driver: SimulatorDriver, source: SimulatorSource
) -> None:
    # one inference VM of 8 vCPUs and 16 GiB holding a model of 4.5 GiB or more, on a clock 20 times the wall's
    simulator = await start_simulator(
        SimulatorConfig(vms=1, seed=1, hotplug_delay_s=0.0, profiles=("inference",), max_vcpus=16), 20.0
    )
    before = await memory_of(source, VM)
    assert (before.used_bytes or 0) > 4 * GIB and before.oom_kills == 0
    await driver.resize_memory(VM, GIB)  # the hypervisor does as asked (the actuator refuses it before, as below-used)

    async def killed() -> bool:
        return ((await memory_of(source, VM)).oom_kills or 0) >= 1

    await eventually(killed, timeout=20, what="the guest's OOM killer")
    after = await memory_of(source, VM)
    # on the way down it swapped (and stalled) before nothing fitted in RAM and swap
    assert (after.swap_in_bytes or 0) > 0 and (after.psi_some_seconds or 0) > 0
    view = await driver.read_memory(VM)
    assert view.requested_bytes == GIB and view.size_bytes >= GIB  # the shrink goes on past the kill

    async def killed_again() -> bool:
        return ((await memory_of(source, VM)).oom_kills or 0) >= 2

    # restarted, the job asks for its model again, which fits no better: killed again, and counted again
    await eventually(killed_again, timeout=20, what="the restarted job killed again")
    await eventually(
        lambda: simulator.count("hotplug_sim_oom_kills_total") >= 1, timeout=10, what="the OOM kill counted"
    )
