"""Faults, with real processes on a real nats-server: each test bounded in time, each asserting what was kept
(one result per command, vCPU counts within bounds, nothing doubled)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client

from evaluation.audit import audit
from hotplug.harness import faults
from hotplug.harness.processes import policy_args, run_hotplug
from hotplug.harness.recorder import Recorder, hypervisor_ops, settle
from shared import bus
from shared.broker import EmbeddedBroker, free_port
from shared.clock import make_clock
from shared.eventlog import read_events
from shared.messages import ErrorCode, ScaleCommand, ScaleResult
from tests.conftest import LIVELY_DECIDER, ServiceProcess, eventually, metric

# Orders for host ``local``, stored as a decider would (no Nats-Msg-Id: a repeat is stored again, as a
# duplicate would be).
order = functools.partial(faults.order, "local")
send = faults.store


async def result_of(watch: Recorder, command: ScaleCommand) -> ScaleResult:
    result = await watch.result_of(command.id, timeout_s=20)
    assert result is not None, f"timed out after 20 s waiting for the result of {command.id}"
    return result


async def answered(nc: Client, watch: Recorder, command: ScaleCommand) -> ScaleResult:
    """Store ``command`` and wait for its result."""
    await send(nc, command)
    return await result_of(watch, command)


def hotplug_load(url: str, vm: str, cores: str) -> None:
    load = run_hotplug("load", vm, cores, "--nats", url)
    assert load.returncode == 0, load.stderr


@dataclass
class SimulatedHost:
    simulator: ServiceProcess
    actuator: ServiceProcess

    async def kill_actuator_mid_plug(self) -> None:
        """SIGKILL the actuator once the simulator has begun its plug. Its own in-flight gauge is not enough: it
        rises before the request is sent, so a kill right after it can land before the hypervisor heard of it."""
        await eventually(
            lambda: metric(self.simulator.metrics_url, "hotplug_sim_hotplugs_in_progress", op="plug") == 1,
            what="a plug under way in the simulator",
        )
        await asyncio.to_thread(self.actuator.kill)


async def simulated_host(
    start_service: Callable[..., ServiceProcess], url: str, vms: int, hotplug_delay: str, *actuator_args: str
) -> SimulatedHost:
    """Simulator (idle VMs of at most 4 vCPUs), collector and actuator of host ``local``."""
    simulator = start_service(
        "simulator",
        "--nats",
        url,
        "--vms",
        str(vms),
        "--profiles",
        "idle",
        "--max-vcpus",
        "4",
        "--hotplug-delay",
        hotplug_delay,
    )
    start_service("collector", "--nats", url, "--interval", "0.5")
    return SimulatedHost(simulator, start_service("actuator", "--nats", url, *actuator_args))


async def test_actuator_safety_whatever_the_decider_says(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    watch = Recorder()
    await watch.attach(nc)
    host = await simulated_host(start_service, broker.url, 5, "0.4", "--vm-bounds", "vm-02=1:2", "--max-changes", "2")
    actuator = host.actuator
    await eventually(lambda: len(watch.online) == 5, what="samples of every VM")

    # its own bounds, tighter than the hypervisor's
    await send(nc, c := order("vm-02", 3, 2))
    refused = await result_of(watch, c)
    assert refused.error_code is ErrorCode.OUT_OF_BOUNDS
    assert (refused.allowed_min_vcpus, refused.allowed_max_vcpus) == (1, 2)  # so deciders need not ask again
    # a rate limit per VM: the third resize within the window is refused
    outcomes = []
    size = 2
    for target in (3, 2, 3):
        await send(nc, c := order("vm-01", target, size))
        r = await result_of(watch, c)
        outcomes.append(r.error_code)
        size = r.vcpus_after or size
    assert outcomes == [None, None, ErrorCode.RATE_LIMITED]
    # a burst of orders for a VM being resized: those overtaken before they could run end as superseded
    await send(nc, first := order("vm-03", 3, 2))
    await eventually(
        lambda: metric(host.simulator.metrics_url, "hotplug_sim_hotplugs_in_progress", op="plug") == 1,
        interval=0.02,
        what="vm-03's plug under way",
    )
    burst = [order("vm-03", 4, 3), order("vm-03", 2, 3), order("vm-03", 4, 3)]
    for c in burst:
        await send(nc, c)
    assert (await result_of(watch, first)).ok
    results = [await result_of(watch, c) for c in burst]
    assert [r.error_code for r in results[:2]] == [ErrorCode.SUPERSEDED, ErrorCode.SUPERSEDED]
    assert results[2].ok and results[2].vcpus_after == 4
    # late (expired) and stale-term orders
    await send(nc, c := order("vm-04", 3, 2, expires_at=time.time() - 1))
    assert (await result_of(watch, c)).error_code is ErrorCode.EXPIRED
    await send(nc, new := order("vm-05", 3, 2, decider="ha", term=2))
    assert (await result_of(watch, new)).ok
    await send(nc, old := order("vm-05", 2, 3, decider="ha", term=1))
    assert (await result_of(watch, old)).error_code is ErrorCode.STALE_TERM
    # a duplicate (same id, stored twice) gets no second result and no second effect
    dup = order("vm-04", 3, 2)
    await send(nc, dup)
    await send(nc, dup)
    await eventually(
        lambda: metric(actuator.metrics_url, "hotplug_messages_dropped_total", reason="duplicate") >= 1,
        what="the duplicate dropped",
    )
    await asyncio.sleep(1.0)
    assert len(watch.results_of(dup.id)) == 1
    # every command ended in exactly one result; no VM left its bounds
    ids = [e.id async for _, e in read_events(nc.jetstream()) if isinstance(e, ScaleCommand)]
    for command_id in set(ids):
        assert len(watch.results_of(command_id)) == 1, command_id
    assert all(1 <= r.vcpus_after <= 4 for r in watch.results if r.vcpus_after is not None)
    assert watch.online["vm-02"] <= 2


async def test_actuator_killed_mid_action_neither_loses_nor_doubles(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    watch = Recorder()
    await watch.attach(nc)
    host = await simulated_host(start_service, broker.url, 1, "3", "--ack-wait", "4")
    await eventually(lambda: watch.online.get("vm-01") == 2, what="vm-01 at 2 vCPUs")
    await send(nc, c := order("vm-01", 3, 2))
    await host.kill_actuator_mid_plug()
    start_service("actuator", "--nats", broker.url, "--ack-wait", "4")  # the same durable consumer: redelivery
    await eventually(lambda: watch.results_of(c.id), timeout=30, what="the one result after the restart")
    await asyncio.sleep(2.0)
    [result] = watch.results_of(c.id)
    assert result.ok, result
    assert result.vcpus_after == 3
    await eventually(lambda: watch.online.get("vm-01") == 3, what="the sample showing 3")
    await asyncio.sleep(1.5)
    assert watch.online["vm-01"] == 3  # plugged once, not twice


async def test_a_command_interrupted_part_way_is_settled_first_and_reports_its_change(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    """2 -> 4 vCPUs, the actuator killed during the first plug: its successor settles the command before taking
    any other (a newer one is already waiting), and the result says what happened: 2 -> 3, not the 4 asked."""
    watch = Recorder()
    await watch.attach(nc)
    host = await simulated_host(start_service, broker.url, 1, "2", "--ack-wait", "30")
    await eventually(lambda: watch.online.get("vm-01") == 2, what="vm-01 at 2 vCPUs")
    await send(nc, first := order("vm-01", 4, 2))
    await host.kill_actuator_mid_plug()
    await eventually(lambda: watch.online.get("vm-01") == 3, what="the first plug landing without its actuator")
    await send(nc, newer := order("vm-01", 1, 3))  # stored before the successor starts
    start_service("actuator", "--nats", broker.url, "--ack-wait", "30")
    await eventually(lambda: watch.results_of(newer.id), timeout=30, what="the newer command's result")
    [settled] = watch.results_of(first.id)
    assert not settled.ok and (settled.vcpus_before, settled.vcpus_after) == (2, 3), settled
    assert watch.results.index(settled) < watch.results.index(watch.results_of(newer.id)[0])
    await asyncio.sleep(1.0)
    report = audit([first, newer], watch.results, ops_by_vm=await hypervisor_ops(nc, "local"))
    assert report.duplicated == 0 and report.lost == 0, report


async def test_a_decider_does_not_repeat_an_order_the_actuator_refused_as_out_of_bounds(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    """vm-01 busy on all 4 cores, but its actuator allows it 2 vCPUs at most: the decider orders more once, learns
    the allowed sizes from the refusal, and holds there, where without them it would ask again after each
    1 s up-cooldown."""
    watch = Recorder()
    await watch.attach(nc)
    await simulated_host(start_service, broker.url, 1, "0.2", "--vm-bounds", "vm-01=1:2")
    await asyncio.to_thread(hotplug_load, broker.url, "vm-01", "4")
    start_service(
        "decider",
        "--nats",
        broker.url,
        *policy_args(
            "threshold",
            {
                "threshold.sustain_s": 1,
                "guard.up_cooldown_s": 1,
            },
        ),
    )
    await eventually(lambda: watch.results, what="the decider's first order")
    await asyncio.sleep(6.0)
    assert [r.error_code for r in watch.results] == [ErrorCode.OUT_OF_BOUNDS]
    assert watch.online["vm-01"] == 2


async def test_a_copy_of_a_command_answered_before_a_restart_gets_no_second_result(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    """The actuator reads back the commands it has answered when it starts. A second stored copy of one answered
    before the restart (after a newer command undid its effect, so acting on it again would plug twice) is
    acknowledged without acting or answering."""
    watch = Recorder()
    await watch.attach(nc)
    host = await simulated_host(start_service, broker.url, 1, "0.2")
    await eventually(lambda: watch.online.get("vm-01") == 2, what="vm-01 at 2 vCPUs")
    grow = order("vm-01", 3, 2)
    assert (await answered(nc, watch, grow)).vcpus_after == 3
    assert (await answered(nc, watch, order("vm-01", 2, 3))).vcpus_after == 2
    host.actuator.stop()
    successor = start_service("actuator", "--nats", broker.url)
    await send(nc, grow)  # the same command, stored a second time
    await eventually(
        lambda: (
            metric(successor.metrics_url, "hotplug_messages_dropped_total", kind="command", reason="duplicate") == 1
        ),
        what="the copy counted as a duplicate",
    )
    await asyncio.sleep(1.5)
    assert len(watch.results_of(grow.id)) == 1
    assert watch.online["vm-01"] == 2


async def test_a_copy_of_a_command_older_than_the_actuators_memory_is_found_in_the_event_log(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    """Answered ids stay in memory for 600 clock seconds; a command stamped before that is looked up in the event
    log. The actuator runs 200 times faster than the wall clock, so a command answered 4 s ago (800 clock s) has
    left its memory, and its copy must be found in the log."""
    clock = make_clock(200.0, time.time())
    host = await simulated_host(start_service, broker.url, 1, "0.2", "--speed", "200", "--epoch", repr(clock.epoch))
    watch = Recorder()
    await watch.attach(nc)

    far = clock.now() + 1e6
    grow = order("vm-01", 3, 2, now=clock.now(), expires_at=far)
    assert (await answered(nc, watch, grow)).vcpus_after == 3
    await asyncio.sleep(4.0)
    assert (await answered(nc, watch, order("vm-01", 2, 3, now=clock.now(), expires_at=far))).vcpus_after == 2
    await send(nc, grow)
    await eventually(
        lambda: (
            metric(host.actuator.metrics_url, "hotplug_messages_dropped_total", kind="command", reason="duplicate") == 1
        ),
        what="the copy counted as a duplicate",
    )
    await asyncio.sleep(1.0)
    assert len(watch.results_of(grow.id)) == 1
    assert "the event log has its result" in host.actuator.log()


async def test_broker_restart_mid_run_loses_no_event(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    port = free_port()
    broker = EmbeddedBroker(tmp_path / "nats", port=port)
    broker.start()
    try:
        common = ["--nats", broker.url, "--speed", "4", "--epoch", repr(time.time())]
        extra = {"simulator": ["--vms", "4"], "decider": LIVELY_DECIDER}  # the plumbing under test, in motion
        started = {
            service: start_service(service, *common, *extra.get(service, []))
            for service in ("simulator", "collector", "decider", "actuator")
        }
        nc = await bus.connect(broker.url, "test", forever=True)
        watch = Recorder()
        await watch.attach(nc, samples=False, commands=False)
        await eventually(lambda: len(watch.results) >= 2, timeout=30, what="the loop acting before the restart")
        broker.stop()
        await asyncio.sleep(2.0)
        broker.start()  # same port, same store
        before = len(watch.results)
        await eventually(lambda: len(watch.results) >= before + 2, timeout=60, what="the loop acting after it")
        started["decider"].stop()  # no new commands: those sent get the time to end in their result
        await settle(nc, timeout_s=60)
        events = [e async for _, e in read_events(nc.jetstream())]
        await nc.close()
    finally:
        broker.stop()
    commands = {e.id for e in events if isinstance(e, ScaleCommand)}
    results = [e.command_id for e in events if isinstance(e, ScaleResult)]
    assert len(results) == len(set(results)), "a command got two results"
    assert set(results) <= commands
    # every command but those still in flight at the end has its result
    assert len(commands - set(results)) <= 2
    assert len(commands) >= 4


async def test_a_flood_of_metrics_sheds_old_samples_never_commands(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    """A runaway agent floods the decider with samples of 2,000 made-up VMs; the decider's intake holds at most
    500 VMs' newest samples and sheds the rest, and a real VM's load step is still acted on, with every command
    ending in one result."""
    observer = Recorder()
    await observer.attach(nc)
    await simulated_host(start_service, broker.url, 2, "0.2")
    decider = start_service("decider", "--nats", broker.url, "--intake-capacity", "500")
    await eventually(lambda: {"vm-01", "vm-02"} <= observer.online.keys(), what="samples of both VMs")
    published = await faults.flood(nc, "local", faults.ghosts(2000), 60, source="flood")
    shed = metric(decider.metrics_url, "hotplug_messages_dropped_total", kind="metric", reason="shed")
    assert shed > 0
    # the decider still answers a real VM's need, on its newest sample
    step_at = time.time()
    await asyncio.to_thread(hotplug_load, broker.url, "vm-01", "4")
    await eventually(
        lambda: any(
            r.vm == "vm-01" and r.ok and (r.vcpus_after or 0) > (r.vcpus_before or 0) and r.time > step_at
            for r in observer.results
        ),
        timeout=30,
        what="vm-01 grown after its load step",
    )

    def accounted() -> float:
        return metric(decider.metrics_url, "hotplug_messages_received_total", kind="metric") + metric(
            decider.metrics_url, "hotplug_messages_dropped_total", kind="metric", reason="shed"
        )

    # every flooded sample is either decided on or counted as shed, once the intake has drained
    await eventually(lambda: accounted() >= published, timeout=30, what="every flooded sample accounted for")
    decider.stop()
    commands, results = await settle(nc, timeout_s=30)
    report = audit(
        commands,
        results,
        seen_live=observer.seen,
        live_results=observer.results,
        ops_by_vm=await hypervisor_ops(nc, "local"),
        samples=observer.samples,
    )
    assert report.lost == 0 and report.duplicated == 0 and report.out_of_bounds == 0, report
