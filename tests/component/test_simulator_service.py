"""The simulator service in this process (an asyncio task) against a real nats-server, asked by its real clients:
the collector's ``simulator`` source reads counters (and in a real collector, watches the guests' PSI triggers), the
actuator's ``simulator`` driver reads, plugs and unplugs, and load pinning is sent as ``hotplug load`` sends it. A
malformed request gets an error reply and is counted, and the service serves on.

The simulator runs on the wall clock; what a test asserts of its counters is arithmetic on the times its replies
carry, never on how long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from hotplug.harness.poll import eventually
from hotplug.harness.recorder import Recorder, hypervisor_ops
from services.actuator.drivers.base import DriverError
from services.actuator.drivers.simulator import SimulatorDriver
from services.collector.rates import sample_from
from services.collector.service import Collector, CollectorMetrics
from services.collector.sources.simulator import SimulatorSource
from services.simulator.jobs import COLUMNS
from services.simulator.service import SimulatorConfig, SimulatorMetrics, SimulatorService
from shared import subjects
from shared.clock import Clock
from shared.messages import ErrorCode, MetricSample
from shared.runtime import ServiceContext
from shared.sim_api import (
    PSI_STALL_S,
    PSI_WINDOW_S,
    HotplugReply,
    JobsReply,
    LoadReply,
    LoadRequest,
    SimPressure,
    StatsReply,
)
from tests.component.conftest import InProcess, Serve

HOST = "h1"
VM = "vm-01"
OTHER = "vm-02"
IN_PROGRESS = "hotplug_sim_hotplugs_in_progress"

Start = Callable[[SimulatorConfig], Awaitable[InProcess[SimulatorMetrics]]]


@pytest.fixture
def start_simulator(serve: Serve) -> Start:
    async def start(config: SimulatorConfig) -> InProcess[SimulatorMetrics]:
        async def body(ctx: ServiceContext[SimulatorMetrics]) -> None:
            await SimulatorService(ctx, config).run()

        service = await serve(SimulatorMetrics("simulator"), body, HOST)
        # It sets its VMs' gauges once its subscriptions are on the server: from then on it answers.
        await eventually(
            lambda: service.count("hotplug_sim_vm_online_vcpus") > 0, timeout=10, what="the simulator serving"
        )
        return service

    return start


@pytest.fixture
def driver(nc: Client) -> SimulatorDriver:
    return SimulatorDriver(nc, HOST, Clock(), hotplug_timeout_s=10.0)


@pytest.fixture
def source(nc: Client) -> SimulatorSource:
    return SimulatorSource(nc, HOST, timeout_s=5.0)


async def interval(source: SimulatorSource, vm: str) -> MetricSample:
    """``vm``'s sample between two reads of the source, as the collector makes it (two reads the clock told apart)."""
    first = next(r for r in await source.read() if r.vm == vm)
    for _ in range(1000):
        sample = sample_from(first, next(r for r in await source.read() if r.vm == vm), HOST, source.name)
        if sample is not None:
            return sample
    raise AssertionError("the simulator's clock did not move between two stats replies")


async def load(nc: Client, vm: str, cores: float | None) -> LoadReply:
    """Pin (or with None, clear) ``vm``'s demand as ``hotplug load`` does."""
    request = msgspec.json.encode(LoadRequest(vm=vm, demand_cores=cores))
    reply = await nc.request(subjects.simulator(HOST, "load"), request, timeout=5)
    return msgspec.json.decode(reply.data, type=LoadReply)


async def refused(operation: Awaitable[object]) -> DriverError:
    with pytest.raises(DriverError) as info:
        await operation
    return info.value


async def test_stats_give_the_collectors_source_every_vms_growing_counters(
    nc: Client, start_simulator: Start, source: SimulatorSource, driver: SimulatorDriver
) -> None:
    await start_simulator(SimulatorConfig(vms=2, seed=1, hotplug_delay_s=0.0))
    first = {r.vm: r for r in await source.read()}
    # generated VMs boot at their requested size, able to grow to twice that (services/simulator/cloud.py SIZES)
    assert {vm: (r.online_vcpus, r.min_vcpus, r.max_vcpus) for vm, r in first.items()} == {
        VM: (2, 1, 4),
        OTHER: (4, 1, 8),
    }
    assert len(first[OTHER].per_vcpu_seconds or {}) == 4  # one counter per online vCPU
    later = {r.vm: r for r in await source.read()}
    for vm, reading in later.items():
        assert reading.time >= first[vm].time
        assert reading.cpu_seconds >= first[vm].cpu_seconds  # cumulative: never goes back
    view = await driver.read(OTHER)
    assert (view.vm, view.online_vcpus, view.max_vcpus) == (OTHER, 4, 8)
    # it answers for its own host only
    with pytest.raises(nats.errors.NoRespondersError):
        await SimulatorSource(nc, "h2").read()


async def test_plug_and_unplug_move_one_vcpu_and_a_refusal_carries_the_hypervisors_code(
    nc: Client, start_simulator: Start, driver: SimulatorDriver
) -> None:
    simulator = await start_simulator(SimulatorConfig(vms=1, max_vcpus=2, hotplug_delay_s=0.0))
    assert (await driver.read(VM)).online_vcpus == 1
    assert (await refused(driver.unplug(VM))).code is ErrorCode.CPU0
    await driver.plug(VM)
    assert (await driver.read(VM)).online_vcpus == 2
    assert (await refused(driver.plug(VM))).code is ErrorCode.CPU_ID_OUT_OF_RANGE
    ghost = await refused(driver.plug("ghost"))
    assert (ghost.code, ghost.message) == (ErrorCode.VM_NOT_FOUND, "Could not find a registered machine named 'ghost'")
    await driver.unplug(VM)
    assert (await driver.read(VM)).online_vcpus == 1
    # the hypervisor's own count: the two that took effect, none of the refused
    assert await hypervisor_ops(nc, HOST) == {VM: 2}
    outcomes = "hotplug_sim_hotplug_operations_total"
    assert simulator.count(outcomes, op="plug", outcome="ok") == 1
    assert simulator.count(outcomes, op="unplug", outcome="ok") == 1
    assert simulator.count(outcomes, op="plug", outcome=ErrorCode.CPU_ID_OUT_OF_RANGE.value) == 1
    assert simulator.count(outcomes, op="unplug", outcome=ErrorCode.CPU0.value) == 1


async def test_a_resize_under_way_refuses_a_second_on_its_vm_and_holds_up_nothing_else(
    start_simulator: Start, driver: SimulatorDriver, source: SimulatorSource
) -> None:
    # Long enough that the first plug is still under way while the test asks the rest, even on a loaded machine.
    simulator = await start_simulator(SimulatorConfig(vms=2, seed=1, hotplug_delay_s=2.0))
    first = asyncio.ensure_future(driver.plug(VM))
    await eventually(lambda: simulator.count(IN_PROGRESS, op="plug") == 1, timeout=10, what="the first plug")
    busy = await refused(driver.plug(VM))
    assert busy.code is ErrorCode.UNKNOWN and "in progress" in busy.message
    assert (await driver.read(VM)).online_vcpus == 2  # the stats are answered meanwhile, the plug not yet done
    # a VM of its own is resized alongside, not after
    second = asyncio.ensure_future(driver.plug(OTHER))
    await eventually(lambda: simulator.count(IN_PROGRESS, op="plug") == 2, timeout=10, what="both plugs under way")
    await asyncio.gather(first, second)
    assert {r.vm: r.online_vcpus for r in await source.read()} == {VM: 3, OTHER: 5}


async def test_load_pins_a_vms_demand_as_hotplug_load_does_and_clear_gives_it_back_to_its_workload(
    nc: Client, start_simulator: Start, source: SimulatorSource
) -> None:
    await start_simulator(SimulatorConfig(vms=1, max_vcpus=2, hotplug_delay_s=0.0))
    assert await load(nc, VM, 10.0) == LoadReply(ok=True)
    # 10 cores asked of 1 online vCPU: it runs one, and nine wait
    pinned = await interval(source, VM)
    assert pinned.cpu_used_cores == pytest.approx(1.0)
    assert pinned.pressure_cores == pytest.approx(9.0)
    assert await load(nc, VM, None) == LoadReply(ok=True)
    # its workload never asks more than its maximum of 2 cores: at most one waits
    freed = await interval(source, VM)
    assert freed.pressure_cores is not None and freed.pressure_cores <= 1.0


# Requests the simulator cannot carry out as asked: (case, operation, body, what the error reply names).
MALFORMED = [
    ("hotplug-not-json", "hotplug", b"not json", "malformed"),
    ("hotplug-unknown-op", "hotplug", b'{"vm": "vm-01", "op": "replug"}', "$.op"),
    ("hotplug-no-vm", "hotplug", b'{"op": "plug"}', "vm"),
    ("load-not-json", "load", b"not json", "malformed"),
    ("load-no-demand", "load", b'{"vm": "vm-01"}', "demand_cores"),
    # `hotplug load vm-01 -4` sends this: a negative demand would run the VM's cumulative counters backwards
    ("load-negative-demand", "load", b'{"vm": "vm-01", "demand_cores": -4}', "demand_cores"),
    # unlike a hot-plug of an unknown VM (a hypervisor's refusal, with its code), a load for one is counted dropped
    ("load-unknown-vm", "load", b'{"vm": "ghost", "demand_cores": 4}', "ghost"),
]


@pytest.mark.parametrize(("operation", "body", "says"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
async def test_a_malformed_request_gets_an_error_reply_is_counted_and_the_service_serves_on(
    nc: Client, start_simulator: Start, driver: SimulatorDriver, operation: str, body: bytes, says: str
) -> None:
    simulator = await start_simulator(SimulatorConfig(vms=1, max_vcpus=2, hotplug_delay_s=0.0))
    reply = await nc.request(subjects.simulator(HOST, operation), body, timeout=5)
    answer: HotplugReply | LoadReply
    if operation == "hotplug":
        answer = msgspec.json.decode(reply.data, type=HotplugReply)
        assert answer.error_code == ErrorCode.UNKNOWN.value  # the code the actuator's driver takes for "unknown"
    else:
        answer = msgspec.json.decode(reply.data, type=LoadReply)
    assert not answer.ok
    assert answer.error is not None and says in answer.error, answer.error
    dropped = "hotplug_messages_dropped_total"
    assert simulator.count(dropped, service="simulator", kind=operation, reason="malformed") == 1
    # ... and it serves on: every request of its clients is still answered
    assert await load(nc, VM, None) == LoadReply(ok=True)
    await driver.plug(VM)
    assert (await driver.read(VM)).online_vcpus == 2
    assert not simulator.task.done()


async def stats(nc: Client) -> StatsReply:
    reply = await nc.request(subjects.simulator(HOST, "stats"), b"{}", timeout=5)
    return msgspec.json.decode(reply.data, type=StatsReply)


async def jobs(nc: Client) -> JobsReply:
    reply = await nc.request(subjects.simulator(HOST, "jobs"), b"{}", timeout=5)
    return msgspec.json.decode(reply.data, type=JobsReply)


async def test_a_waiting_job_starts_once_a_vm_shrinks_and_a_finished_one_leaves_the_host(
    nc: Client, start_simulator: Start, driver: SimulatorDriver, tmp_path: Path
) -> None:
    arrivals = tmp_path / "arrivals.csv"
    arrivals.write_text(
        ",".join(COLUMNS) + "\n"
        "0,short,1,1,idle,0.5,\n"  # 2 + 1 of 3: starts at once, and stops half a second later
        "0,big,2,4,idle,3600,\n"  # 3 + 2 > 3: waits, and still 2 + 2 > 3 once short has gone
    )
    # vm-01 boots at 2 of 4 vCPUs on a host of 3 cores: capacity 3 vCPUs
    simulator = await start_simulator(
        SimulatorConfig(vms=1, max_vcpus=4, hotplug_delay_s=0.0, host_cores=3, arrivals_file=arrivals)
    )
    first = await stats(nc)
    assert first.host is not None and (first.host.cores, first.host.capacity_vcpus) == (3, 3)
    await eventually(lambda: simulator.count("hotplug_sim_jobs_finished_total") == 1, timeout=10, what="short's end")
    after = await stats(nc)
    assert [vm.vm for vm in after.vms] == [VM]  # the finished VM left the host; big waits
    assert after.host is not None and (after.host.waiting_vms, after.host.committed_vcpus) == (1, 2)
    assert (await refused(driver.read("short"))).code is ErrorCode.VM_NOT_FOUND
    assert simulator.count("hotplug_sim_vm_online_vcpus", vm="short") == 0  # its series went with it

    await driver.unplug(VM)  # 1 + 2 of 3: room for big
    await eventually(lambda: simulator.count("hotplug_sim_jobs_started_total") == 2, timeout=10, what="big's start")
    assert {vm.vm: vm.online_vcpus for vm in (await stats(nc)).vms} == {VM: 1, "big": 2}
    big = next(j for j in (await jobs(nc)).jobs if j.name == "big")
    assert big.start_s is not None and big.end_s is None and big.wait_s is not None and big.wait_s > 0
    # the host is full: the hypervisor refuses a plug, as VirtualBox refuses what it cannot do
    full = await refused(driver.plug(VM))
    assert full.code is ErrorCode.HOST_FULL and "committed 3 of its 3 vCPUs" in full.message


async def test_a_vm_whose_demand_exceeds_its_vcpus_says_so_at_once_and_once_a_window(
    nc: Client, start_simulator: Start, source: SimulatorSource
) -> None:
    """Its guest's PSI trigger (100 ms of stall within 1 s) fires on the pressure subject as the stall reaches 100 ms,
    between stats requests (nobody asks the simulator here), and again only a window later."""
    events: list[SimPressure] = []

    async def on_event(msg: Msg) -> None:
        events.append(msgspec.json.decode(msg.data, type=SimPressure))

    await nc.subscribe(subjects.simulator_pressure(HOST), cb=on_event)
    # idle guests (0.03 of their size) never stall of themselves
    await start_simulator(SimulatorConfig(vms=1, max_vcpus=2, hotplug_delay_s=0.0, profiles=("idle",)))
    before = max(r.time for r in await source.read())
    assert await load(nc, VM, 10.0) == LoadReply(ok=True)
    await eventually(lambda: len(events) >= 2, timeout=10, what="two firings of the pinned VM's trigger")
    first, second = events[:2]
    assert (first.vm, second.vm) == (VM, VM)
    assert (first.stall_s, first.window_s) == (PSI_STALL_S, PSI_WINDOW_S)
    assert first.time >= before + PSI_STALL_S - 1e-6
    assert second.time - first.time >= PSI_WINDOW_S - 1e-6


async def test_an_overloaded_simulated_vm_brings_an_urgent_sample_through_a_real_collector(
    nc: Client, serve: Serve, start_simulator: Start
) -> None:
    """The collector's ``simulator`` source watches the pressure subject: a VM pinned above its vCPUs brings an urgent
    sample, carrying its pressure, long before the next regular round (an hour away)."""
    recorder = Recorder()
    await recorder.attach(nc, commands=False, results=False)
    await start_simulator(SimulatorConfig(vms=1, max_vcpus=2, hotplug_delay_s=0.0, profiles=("idle",)))

    async def body(ctx: ServiceContext[CollectorMetrics]) -> None:
        await Collector(ctx, SimulatorSource(ctx.nc, HOST, timeout_s=5.0), 3600.0, watch_pressure=True).run()

    collector = await serve(CollectorMetrics("collector"), body, HOST)
    # its first round reads and sends nothing (a rate needs two readings); an urgent round follows it
    await eventually(
        lambda: collector.count("hotplug_collector_sampling_duration_seconds_count") >= 1,
        timeout=10,
        what="the first regular round",
    )
    assert await load(nc, VM, 10.0) == LoadReply(ok=True)
    await eventually(
        lambda: any(s.vm == VM and s.urgent for s in recorder.samples), timeout=10, what="an urgent sample"
    )
    urgent = next(s for s in recorder.samples if s.vm == VM and s.urgent)
    assert urgent.pressure_cores is not None and urgent.pressure_cores > 0
    await collector.stop()
