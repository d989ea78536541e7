"""The config file's [[vm]] rules in the whole loop as real processes: an `off` VM is never commanded, a VM's
max_vcpus is enforced by the actuator even when a decider asks for more, a SIGHUP reload changes a VM's bounds
without a restart and without losing decision state, and an invalid reload is refused, counted, and changes
nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import nats.errors
from nats.aio.client import Client

from hotplug.harness.recorder import Recorder
from shared import subjects
from shared.broker import EmbeddedBroker
from shared.messages import ErrorCode
from shared.sim_api import LoadReply, LoadRequest
from tests.conftest import LIVELY_DECIDER, ServiceProcess, eventually, lines_matching, metric

SPEED = 4.0
VMS = ("vm-01", "vm-02", "vm-03")


async def set_load(nc: Client, vm: str, cores: float) -> None:
    request = msgspec.json.encode(LoadRequest(vm=vm, demand_cores=cores))
    reply = await nc.request(subjects.simulator("local", "load"), request, timeout=5)
    assert msgspec.json.decode(reply.data, type=LoadReply).ok


async def start_loop(
    broker: EmbeddedBroker,
    nc: Client,
    start_service: Callable[..., ServiceProcess],
    decider_config: Path,
    actuator_config: Path,
    busy: tuple[str, ...] = (),
) -> tuple[ServiceProcess, ServiceProcess]:
    common = ["--nats", broker.url, "--speed", str(SPEED), "--epoch", repr(time.time())]
    # Every VM boots with 4 of 8 vCPUs and idles, but the `busy` ones want all 8 from the first sample.
    start_service("simulator", *common, "--vms", str(len(VMS)), "--profiles", "idle", "--max-vcpus", "8")

    async def loaded(vm: str) -> bool:
        # ready means its metrics endpoint answers; its requests' subscriptions follow a moment later (on a loaded
        # machine, a moment long enough for a first request to find no responder)
        try:
            await set_load(nc, vm, 8.0)
        except nats.errors.NoRespondersError:
            return False
        return True

    for vm in busy:
        await eventually(lambda vm=vm: loaded(vm), timeout=30, what=f"the simulator taking {vm}'s load")
    start_service("collector", *common, "--interval", "1")
    actuator = start_service("actuator", *common, "--config", str(actuator_config))
    decider = start_service(
        "decider", *common, *LIVELY_DECIDER, "--param", "guard.up_cooldown_s=0", "--config", str(decider_config)
    )
    return decider, actuator


async def test_an_off_vm_is_never_commanded_and_the_actuator_holds_a_vm_to_its_max(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    # The decider knows vm-01 is off but not vm-02's bound (an old or foreign decider); the actuator knows both.
    decider_file = tmp_path / "decider.toml"
    decider_file.write_text('[[vm]]\nmatch = "vm-01"\nautoscale = "off"\n')
    actuator_file = tmp_path / "actuator.toml"
    # vm-02 boots with 4 of 8 vCPUs, above the actuator's maximum of 3 for it: the decider's first order to grow
    # it is beyond the bound (an order within it tells the decider the bound, and it would not ask again).
    actuator_file.write_text(
        '[[vm]]\nmatch = "vm-01"\nautoscale = "off"\n\n[[vm]]\nmatch = "local/vm-02"\nmax_vcpus = 3\n'
    )
    watch = Recorder()
    await watch.attach(nc)
    decider, actuator = await start_loop(broker, nc, start_service, decider_file, actuator_file, busy=VMS)
    await eventually(lambda: watch.online.get("vm-03") == 8, timeout=60, what="vm-03 growing to 8")
    await eventually(
        lambda: any(r.vm == "vm-02" and r.error_code is ErrorCode.OUT_OF_BOUNDS for r in watch.results),
        timeout=30,
        what=f"the actuator refusing vm-02 beyond its max_vcpus: {[r for r in watch.results if r.vm == 'vm-02']}",
    )

    assert [c for c in watch.commands if c.vm == "vm-01"] == []
    assert watch.online["vm-01"] == 4
    assert max(s.online_vcpus for s in watch.samples if s.vm == "vm-02") == 4  # never grown
    refused = [r for r in watch.results if r.vm == "vm-02" and r.error_code is ErrorCode.OUT_OF_BOUNDS]
    assert all((r.target_vcpus or 0) > 3 and r.allowed_max_vcpus == 3 and r.vcpus_after == 4 for r in refused)
    assert not [r for r in watch.results if r.vm == "vm-02" and r.ok and (r.vcpus_after or 0) > 3]
    assert metric(actuator.metrics_url, "hotplug_actuator_actions_total", error_code="out-of-bounds") >= 1
    info = metric(decider.metrics_url, "hotplug_decider_vm_rule_info", vm="vm-01", rule="vm-01", autoscale="off")
    assert info == 1


async def test_a_sighup_reload_moves_a_bound_and_an_invalid_one_is_refused(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    config = tmp_path / "hotplug.toml"
    config.write_text('[[vm]]\nname = "capped"\nmatch = "vm-02"\nmax_vcpus = 5\n')
    watch = Recorder()
    await watch.attach(nc)
    decider, actuator = await start_loop(broker, nc, start_service, config, config, busy=("vm-02",))
    await eventually(lambda: watch.online.get("vm-02") == 5, timeout=60, what="vm-02 growing to its max of 5")
    # Held at 5: the decider asks for nothing beyond its rule, so the actuator refuses nothing.
    await asyncio.sleep(8.0 / SPEED)
    assert watch.online["vm-02"] == 5
    assert not [r for r in watch.results if r.error_code is ErrorCode.OUT_OF_BOUNDS]

    # An invalid file: refused by both, with file, line and reason, counted; the old rules stay.
    config.write_text('[[vm]]\nname = "capped"\nmatch = "vm-02"\nmax_vcpus = "seven"\n')
    for service in (decider, actuator):
        os.kill(service.proc.pid, signal.SIGHUP)
    for service in (decider, actuator):
        await eventually(
            lambda s=service: metric(s.metrics_url, "hotplug_config_reloads_total", outcome="invalid") == 1,
            what="the invalid reload counted",
        )
        assert lines_matching(service.log(), rf"config reload refused.*{config}:4: vm\[0\].max_vcpus: Expected `int`")
        assert metric(service.metrics_url, "hotplug_config_reloads_total", outcome="ok") == 0
    await asyncio.sleep(8.0 / SPEED)
    assert watch.online["vm-02"] == 5

    # A valid one: vm-02 may grow to 7, in the same processes, each VM keeping its decision state.
    config.write_text('[[vm]]\nname = "capped"\nmatch = "vm-02"\nmax_vcpus = 7\n')
    pids = (decider.proc.pid, actuator.proc.pid)
    for service in (decider, actuator):
        os.kill(service.proc.pid, signal.SIGHUP)
    await eventually(lambda: watch.online.get("vm-02") == 7, timeout=60, what="vm-02 growing to its new max of 7")
    assert (decider.proc.pid, actuator.proc.pid) == pids
    assert decider.proc.poll() is None and actuator.proc.poll() is None
    for service in (decider, actuator):
        assert metric(service.metrics_url, "hotplug_config_reloads_total", outcome="ok") == 1
    assert lines_matching(decider.log(), r"config reloaded .*: 1 \[\[vm\]\] rules; 3 VMs keep their decision state$")
    assert not lines_matching(decider.log(), "afresh")
    assert max(s.online_vcpus for s in watch.samples if s.vm == "vm-02") == 7
    assert not [r for r in watch.results if r.error_code is ErrorCode.OUT_OF_BOUNDS]
