"""The decider service in this process (an asyncio task) against a real nats-server, fed samples on the bus, in
each of its modes: commands go to the event log, a dry run sends nothing, a shadow sends only proposals; of
replicas sharing a lease, only the leader commands.

The seed's threshold rule with no sustain acts on the first busy sample, so one sample makes one order. A calm
sample for another VM is the probe: the decider takes its samples in order, so once it has counted a probe sent
after the busy sample, it has handled the busy one, and whatever that made it send has left on its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from nats.aio.client import Client

from hotplug.harness import faults
from hotplug.harness.poll import eventually
from hotplug.harness.recorder import Recorder
from services.decider.registry import build_policy
from services.decider.service import Decider, DeciderConfig, DeciderMetrics
from shared import bus, subjects
from shared.broker import EmbeddedBroker
from shared.codec import Decoder, encode
from shared.messages import MetricSample, ScaleCommand
from shared.runtime import ServiceContext, ServiceOptions

HOST = "h1"
VM = "vm"
PROBE = "probe"


def sample(vm: str, used: float, online: int = 2) -> MetricSample:
    return faults.sample(HOST, vm, time.time(), source="test", online=online, used=used)


class Running:
    def __init__(self, decider: Decider, task: asyncio.Task[None], nc: Client, feed: Client) -> None:
        self.decider = decider
        self.task = task
        self.nc = nc
        self.feed = feed  # the collector's side of the bus

    def received(self) -> float:
        value = self.decider.metrics.registry.get_sample_value(
            "hotplug_messages_received_total", {"service": "decider", "kind": "metric"}
        )
        return value or 0.0

    def decisions(self, mode: str) -> float:
        total = 0.0
        for family in self.decider.metrics.registry.collect():
            for s in family.samples:
                if s.name == "hotplug_decider_decisions_total" and s.labels["mode"] == mode:
                    total += s.value
        return total

    async def send(self, *samples: MetricSample) -> None:
        for one in samples:
            await self.feed.publish(subjects.metrics(one.host, one.vm), encode(one))
        await self.feed.flush()

    async def handled(self) -> None:
        """Wait until the decider has handled every sample sent so far, and what it sent meanwhile is out."""
        before = self.received()
        await self.send(sample(PROBE, used=1.0))
        await eventually(lambda: self.received() > before, timeout=10, what="the probe sample")
        await self.nc.flush()  # what the decider published before the probe reached the server
        await self.feed.flush()  # and was passed on to the test's subscribers before this returns

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.nc.close()


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_decider(broker: EmbeddedBroker, nc: Client) -> AsyncIterator[Start]:
    running: list[Running] = []

    async def start(**config: object) -> Running:
        own = await bus.connect(broker.url, "decider", forever=False)
        ctx = ServiceContext(
            options=ServiceOptions(name="decider", nats_url=broker.url, host=HOST),
            nc=own,
            js=own.jetstream(),
            metrics=DeciderMetrics("decider"),
        )
        policy, rails = build_policy("threshold", {"threshold": {"sustain_s": "0"}, "guard": {"warmup_s": "0"}})
        decider = Decider(ctx, policy, rails, DeciderConfig(**{"name": "d1", **config}))  # type: ignore[arg-type]
        started = Running(decider, asyncio.ensure_future(decider.run()), own, nc)
        running.append(started)
        # Ready once it takes samples: probes until one is counted (samples sent before it subscribed are lost).
        while started.received() == 0:
            await started.send(sample(PROBE, used=1.0))
            await asyncio.sleep(0.05)
        return started

    yield start
    for started in running:
        await started.stop()


@pytest.fixture
async def orders(nc: Client) -> Recorder:
    watched = Recorder()
    await watched.attach(nc, samples=False, results=False, proposals=True)
    return watched


def proposed(orders: Recorder, vm: str) -> list[ScaleCommand]:
    return [p for p in orders.proposals if p.vm == vm]


async def test_commands_mode_stores_one_command_in_the_event_log_and_proposes_nothing(
    nc: Client, orders: Recorder, start_decider: Start
) -> None:
    decider = await start_decider()
    await decider.send(sample(VM, used=2.0))
    await eventually(lambda: orders.commands, timeout=10, what="a command")
    await decider.handled()
    [command] = orders.commands
    assert (command.vm, command.seen_vcpus, command.target_vcpus, command.decider) == (VM, 2, 3, "d1")
    stored = await nc.jetstream().get_last_msg(subjects.EVENTS_STREAM, subjects.commands(HOST, VM))
    assert Decoder(ScaleCommand).decode(stored.data or b"") == command
    assert orders.proposals == []
    assert decider.decisions("command") == 1


async def test_dry_run_decides_but_sends_nothing(orders: Recorder, start_decider: Start) -> None:
    decider = await start_decider(dry_run=True)
    await decider.send(sample(VM, used=2.0))
    await decider.handled()
    assert decider.decisions("dry-run") == 1  # it did decide to grow the VM
    assert orders.commands == []
    assert orders.proposals == []


async def test_shadow_proposes_for_every_sample_holding_included_and_commands_nothing(
    orders: Recorder, start_decider: Start
) -> None:
    decider = await start_decider(shadow=True)
    await decider.send(sample(VM, used=2.0))
    await decider.handled()
    await decider.send(sample(VM, used=1.0, online=3))
    await decider.handled()
    grow, hold = proposed(orders, VM)
    assert (grow.vm, grow.seen_vcpus, grow.target_vcpus) == (VM, 2, 3)
    assert (hold.seen_vcpus, hold.target_vcpus, hold.reason) == (3, 3, "hold")
    assert decider.decisions("shadow") == 1
    assert orders.commands == []


async def test_of_two_replicas_sharing_a_lease_only_the_leader_commands_naming_its_term(
    orders: Recorder, start_decider: Start
) -> None:
    leader = await start_decider(lease="fleet")
    standby = await start_decider(lease="fleet", name="d2")  # a replica has a name of its own
    assert leader.decider.leadership.active and not standby.decider.leadership.active
    await leader.send(sample(VM, used=2.0))
    await eventually(lambda: orders.commands, timeout=10, what="a command")
    await leader.handled()
    await standby.handled()
    [command] = orders.commands
    assert (command.decider, command.term) == ("fleet", leader.decider.leadership.term)
    assert command.term >= 1
    assert standby.decisions("command") == 1  # the standby decided the same, and kept it to itself
