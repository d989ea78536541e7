"""The decider as a process on a real nats-server: dry run, stale samples, command shape, and its harm steer
kept across a restart."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from hotplug.harness import faults
from hotplug.harness.processes import policy_args
from hotplug.harness.recorder import Recorder
from hotplug.harness.scrape import metric_async
from services.decider.sharding import STATE_BUCKET
from services.decider.steer_store import decode_state, steer_key
from shared import subjects
from shared.broker import EmbeddedBroker
from shared.codec import encode
from shared.messages import MetricSample
from tests.conftest import ServiceProcess, eventually, metric


def busy_sample(t: float, vm: str = "vm a") -> MetricSample:
    return faults.sample("h1", vm, t, source="test", used=2.0)  # both of its 2 vCPUs busy


async def publish_busy(nc: Client, vm: str, count: int, age: float = 0.0) -> None:
    for _ in range(count):
        sample = busy_sample(time.time() - age, vm)
        await nc.publish(subjects.metrics(sample.host, sample.vm), encode(sample))
        await asyncio.sleep(0.05)
    await nc.flush()


async def test_commands_carry_reason_expiry_and_sample_time(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    watch = Recorder()
    await watch.attach(nc, samples=False, results=False)
    commands = watch.commands
    start_service(
        "decider",
        "--nats",
        broker.url,
        *policy_args(
            "threshold",
            {
                "threshold.sustain_s": 2,
            },
        ),
        "--command-ttl",
        "30",
    )
    await publish_busy(nc, "vm a; $(x)", 3)
    await eventually(lambda: commands, timeout=60, what="a command")
    command = commands[0]
    assert (command.vm, command.host, command.seen_vcpus, command.target_vcpus) == ("vm a; $(x)", "h1", 2, 3)
    assert command.reason == "cpu 100% > 80% for 2 s"
    assert command.expires_at == command.time + 30
    assert command.sample_time is not None
    assert command.sample_time <= command.time
    # The order is pending: more busy samples give no second one. Another VM's command, from samples sent after
    # them, marks that the decider has decided on them (it publishes its commands in the order it decides).
    await publish_busy(nc, "vm a; $(x)", 3)
    await publish_busy(nc, "vm b", 3)
    await eventually(lambda: any(c.vm == "vm b" for c in commands), timeout=60, what="vm b's command")
    assert [c.vm for c in commands].count("vm a; $(x)") == 1


async def test_dry_run_decides_but_commands_nothing_and_stale_samples_decide_nothing(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    watch = Recorder()
    await watch.attach(nc, samples=False, results=False)
    dry = start_service(
        "decider", "--nats", broker.url, "--policy", "threshold", "--param", "threshold.sustain_s=2", "--dry-run"
    )

    async def stale_ones_dropped() -> bool:
        # A decider serves its metrics before its intake subscribes, and core NATS keeps nothing for a late
        # subscriber: publish until four have been seen and dropped.
        await publish_busy(nc, "stale", 1, age=60.0)
        return metric(dry.metrics_url, "hotplug_messages_dropped_total", reason="stale") >= 4

    await eventually(stale_ones_dropped, what="stale samples dropped")
    await publish_busy(nc, "fresh", 3)
    await eventually(lambda: "dry run: would resize h1/fresh 2 -> 3" in dry.log(), what="the dry-run log line")
    assert metric(dry.metrics_url, "hotplug_decider_decisions_total", mode="dry-run") >= 1
    assert "stale" not in [line.split("/")[-1].split(" ")[0] for line in dry.log().splitlines() if "would" in line]
    # A later decision marks that any command of the first would have been sent by now (commands go out in the order
    # they are decided): not one message on a command subject.
    await publish_busy(nc, "later", 3)
    await eventually(lambda: "dry run: would resize h1/later 2 -> 3" in dry.log(), what="the later dry-run line")
    assert watch.commands == [] and watch.undecodable == 0


@pytest.mark.parametrize("ending", ["stopped", "killed"])
async def test_a_restarted_decider_prices_by_the_harm_steer_it_had(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess], ending: str
) -> None:
    """The fleet's harm steer outlives the decider process (services/decider/steer_store.py): stopped (SIGTERM:
    saved on the way out) or killed (SIGKILL: as saved when its factor was last set) and started again on the same
    broker, a decider of the same name prices its next sample by the factor the first had set, not by the law (a
    factor of 1)."""
    args = ["decider", "--nats", broker.url, "--policy", "default", "--max-sample-age", "1000000", "--dry-run"]
    factor_of = {"policy": "default", "target_unmet_pct": "1"}
    hour = math.floor(time.time() / 3600) * 3600
    # Six hours of saturated VMs (2 of 4 vCPUs busy), one each 10 minutes, each on its own subject (the intake
    # keeps a VM's newest sample only): `default` guesses demand above them, far more than 1 % of it unmet, and
    # its steer prices unmet demand up from the second hour on.
    history = [faults.sample("h1", f"vm{k}", hour - 6 * 3600 + k * 600.0, source="test", used=2.0) for k in range(36)]

    async def publish(samples: list[MetricSample]) -> None:
        for sample in samples:
            await nc.publish(subjects.metrics(sample.host, sample.vm), encode(sample))
        await nc.flush()

    first = start_service(*args)

    async def priced_up() -> bool:
        # Core NATS keeps nothing for a subscriber not there yet: publish until the decider has counted them. A
        # sample again, at an earlier time, only adds to what the current hour counts.
        await publish(history)
        return await metric_async(first.metrics_url, "hotplug_decider_price_factor", **factor_of) > 1.2

    await eventually(priced_up, timeout=60, what="the steer's factor above 1")
    # The factor first shows above 1.2 while the decider may still be working through the history, setting it again
    # at each later hour: wait until the save made when it was last set has landed and agrees with the factor the
    # decider exports (the samples published after that are of earlier hours, which set no new factor).
    state = await nc.jetstream().key_value(STATE_BUCKET)
    factor = math.nan

    async def saved() -> bool:
        nonlocal factor
        try:
            entry = await state.get(steer_key("decider", "default", 0.01))
        except KeyNotFoundError:
            return False
        stored = decode_state("saved", entry.value or b"")
        factor = await metric_async(first.metrics_url, "hotplug_decider_price_factor", **factor_of)
        return stored is not None and math.exp(stored.log_factor) == pytest.approx(factor, rel=1e-12)

    await eventually(saved, what="the steer saved with the factor it set last")
    if ending == "stopped":
        await first.stop_async()
    else:
        await asyncio.to_thread(first.kill)  # it saves nothing more: it resumes from the save above

    second = start_service(*args)

    async def priced() -> float:
        await publish(history[-1:])  # in the hour the first decider's factor was set for
        return await metric_async(second.metrics_url, "hotplug_decider_price_factor", **factor_of)

    await eventually(priced, timeout=60, what="the restarted decider's price factor")
    assert await priced() == pytest.approx(factor, rel=1e-12)
