"""One simulated host whose ``[[host]]`` rule gives it 8 vCPUs, its VMs commanded by two deciders that know nothing of
each other or of the capacity, under a load pinned high on every VM: the actuator keeps what is committed within
the capacity (every grow it judged says so in its result, and the simulator's own counts never sum above it), grows
that do not fit end host-full, each command with exactly one result; a SIGHUP reload that raises the capacity is
taken without a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from nats.aio.client import Client

from hotplug.harness.processes import run_hotplug
from hotplug.harness.recorder import Recorder, hypervisor_online, settle
from hotplug.harness.scrape import metric_async
from shared.broker import EmbeddedBroker
from shared.messages import ErrorCode
from tests.conftest import LIVELY_DECIDER, ServiceProcess, eventually

HOST = "local"
CAPACITY = 8
RAISED = 10  # after a reload (SIGHUP) of the rule
VMS = ("vm-01", "vm-02", "vm-03")  # each boots with 2 of its 4 vCPUs: 6 committed, 12 wanted under full load


def pin_load(url: str, vm: str, cores: str) -> None:
    done = run_hotplug("load", vm, cores, "--nats", url, "--host", HOST, timeout=30)
    assert done.returncode == 0, done.stderr


async def test_two_deciders_never_take_the_host_above_its_capacity(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    config = tmp_path / "hotplug.toml"
    config.write_text(f'[[host]]\nmatch = "{HOST}"\ncpus = {CAPACITY}\n')
    watch = Recorder()
    await watch.attach(nc)
    common = ["--nats", broker.url, "--host", HOST, "--speed", "2", "--epoch", repr(time.time())]
    start_service(
        "simulator", *common, "--vms", str(len(VMS)), "--profiles", "idle", "--max-vcpus", "4", "--hotplug-delay", "0.2"
    )
    start_service("collector", *common, "--interval", "1")
    # only the actuator reads the rule: the deciders ask for what their VMs want, as deciders that plan with
    # another view of the host (or none) would
    actuator = start_service("actuator", *common, "--config", str(config))
    deciders = [start_service("decider", *common, "--name", name, *LIVELY_DECIDER) for name in ("d1", "d2")]
    await eventually(lambda: set(VMS) <= watch.online.keys(), what="samples of every VM")
    for vm in VMS:
        await asyncio.to_thread(pin_load, broker.url, vm, "4")

    sums: list[int] = []  # the simulator's own online vCPUs, summed, as often as the test can read them

    async def full(capacity: int) -> bool:
        sums.append(sum((await hypervisor_online(nc, HOST)).values()))
        return sums[-1] == capacity and any(r.error_code is ErrorCode.HOST_FULL for r in watch.results)

    await eventually(lambda: full(CAPACITY), timeout=90, interval=0.1, what="the host full and a grow refused")
    refused_before = sum(r.error_code is ErrorCode.HOST_FULL for r in watch.results)

    async def refused_again() -> bool:  # the deciders keep asking for more while it is full; sums read each time
        sums.append(sum((await hypervisor_online(nc, HOST)).values()))
        return sum(r.error_code is ErrorCode.HOST_FULL for r in watch.results) >= refused_before + 2

    await eventually(refused_again, timeout=60, interval=0.1, what="more grows refused while the host is full")
    assert max(sums) <= CAPACITY, sums
    # the operator gives the host 2 more CPUs: a reload, no restart, and the deciders' grows take them
    config.write_text(f'[[host]]\nmatch = "{HOST}"\ncpus = {RAISED}\n')
    os.kill(actuator.pid, signal.SIGHUP)
    sums.clear()
    await eventually(lambda: full(RAISED), timeout=60, interval=0.1, what="the raised capacity taken")
    for decider in deciders:
        decider.stop()
    commands, results = await settle(nc, timeout_s=30)

    assert max(sums) <= RAISED, sums
    assert {c.decider for c in commands} == {"d1", "d2"}
    assert sorted(r.command_id for r in results) == sorted(c.id for c in commands)  # one result each
    judged = [r for r in results if r.host_capacity_vcpus is not None]
    assert {r.host_capacity_vcpus for r in judged} == {CAPACITY, RAISED}
    for r in judged:  # what was committed when the grow was judged, and with what it took
        assert r.host_capacity_vcpus is not None and r.host_committed_vcpus is not None
        assert r.vcpus_before is not None and r.vcpus_after is not None
        assert r.host_committed_vcpus + r.vcpus_after - r.vcpus_before <= r.host_capacity_vcpus, r
    refused = [r for r in results if r.error_code is ErrorCode.HOST_FULL]
    assert refused and all(r.retry_after == 2.0 for r in refused)
    assert await metric_async(actuator.metrics_url, "hotplug_actuator_host_capacity_vcpus") == RAISED
    assert await metric_async(actuator.metrics_url, "hotplug_actuator_host_committed_vcpus") == RAISED
