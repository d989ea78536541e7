"""The whole loop as real processes against an actuator whose rate limit is lowered to 2 resizes per VM per 60 s:
the decider learns the limit from its first result and plans within it, so the limit stays a backstop that is
never hit, under load that keeps asking for changes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client

from hotplug.harness.processes import policy_args
from hotplug.harness.recorder import Recorder, settle
from shared import subjects
from shared.broker import EmbeddedBroker
from shared.messages import ErrorCode, ScaleCommand, ScaleResult
from shared.sim_api import LoadReply, LoadRequest
from tests.conftest import ServiceProcess, eventually, metric

SPEED = 6.0  # simulated seconds per wall second: the 60-s window passes in 10 s
LIMIT = 2
WINDOW_S = 60.0
VMS = ("vm-01", "vm-02")


async def set_load(nc: Client, vm: str, cores: float) -> None:
    request = msgspec.json.encode(LoadRequest(vm=vm, demand_cores=cores))
    reply = await nc.request(subjects.simulator("local", "load"), request, timeout=5)
    assert msgspec.json.decode(reply.data, type=LoadReply).ok


def most_in_a_window(times: list[float], window: float) -> int:
    return max((sum(1 for u in times if t <= u < t + window) for t in times), default=0)


async def test_the_decider_never_meets_a_lowered_actuator_rate_limit(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    watch = Recorder()
    await watch.attach(nc)
    common = ["--nats", broker.url, "--speed", str(SPEED), "--epoch", repr(time.time())]
    start_service(
        "simulator", *common, "--vms", str(len(VMS)), "--profiles", "idle", "--max-vcpus", "4", "--hotplug-delay", "0.2"
    )
    start_service("collector", *common, "--interval", "1")
    actuator = start_service("actuator", *common, "--max-changes", str(LIMIT), "--rate-window", str(WINDOW_S))
    # A rule that wants a change on nearly every sample (no cooldowns, no warm-up), and an own budget far above
    # the actuator's limit: only what the decider learns from results can keep it within 2 per 60 s.
    decider = start_service(
        "decider",
        *common,
        *policy_args(
            "threshold",
            {
                "threshold.sustain_s": 1,
                "guard.up_cooldown_s": 0,
                "guard.down_cooldown_s": 0,
                "guard.warmup_s": 0,
                "guard.max_changes": 100,
            },
        ),
    )
    await eventually(lambda: set(VMS) <= watch.online.keys(), what="samples of every VM")
    # Load that flips between all cores busy and idle every 15 simulated seconds, for 3 windows.
    for i in range(12):
        for j, vm in enumerate(VMS):
            await set_load(nc, vm, 4.0 if (i + j) % 2 == 0 else 0.05)
        await asyncio.sleep(15.0 / SPEED)
    held_by_budget = metric(decider.metrics_url, "hotplug_decider_held_total", reason="change-budget")
    decider.stop()  # no new commands: those sent get the time to end in their result
    commands, results = await settle(nc, timeout_s=30)

    assert not [r for r in results if r.error_code is ErrorCode.RATE_LIMITED], "the actuator's limit was hit"
    assert metric(actuator.metrics_url, "hotplug_actuator_actions_total", error_code="rate-limited") == 0
    result_of: dict[str, ScaleResult] = {r.command_id: r for r in results}
    changes = 0
    for vm in VMS:
        sent: list[ScaleCommand] = [c for c in commands if c.vm == vm]
        changed = [c.time for c in sent if (r := result_of.get(c.id)) is not None and r.vcpus_before != r.vcpus_after]
        unchanged = len(sent) - len(changed)
        # what the actuator counts (orders that changed the VM) never exceeds its limit in any window of sending
        # time, and the orders that changed nothing (stale view, already there) are few
        assert most_in_a_window(changed, WINDOW_S) <= LIMIT, (vm, changed)
        assert most_in_a_window([c.time for c in sent], WINDOW_S) <= LIMIT + unchanged, vm
        changes += len(changed)
    # the loop did keep acting, and the budget is what held it back
    assert changes >= 2 * len(VMS), changes
    assert held_by_budget > 0
