"""The decider service in this process (an asyncio task) against a real nats-server, fed samples on the bus, in
each of its modes: commands go to the event log, a dry run sends nothing, a shadow sends only proposals; of
replicas sharing a lease, only the leader commands.

The seed's threshold rule with no sustain acts on the first busy sample, so one sample makes one order. A calm
sample for another VM is the probe: the decider takes its samples in order, so once it has counted a probe sent
after the busy sample, it has handled the busy one, and whatever that made it send has left on its connection.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from hotplug.harness import faults
from hotplug.harness.poll import eventually
from hotplug.harness.recorder import Recorder
from services.decider.registry import build_policy
from services.decider.service import Decider, DeciderConfig, DeciderMetrics, WholeFleet
from shared import subjects, topology
from shared.codec import Decoder, encode
from shared.eventlog import read_deferrals
from shared.messages import Deferral, DeferralAction, HostState, MetricSample, ScaleCommand
from shared.runtime import ServiceContext
from tests.component.conftest import InProcess, Serve

HOST = "h1"
VM = "vm"
PROBE = "probe"


def sample(vm: str, used: float, online: int = 2) -> MetricSample:
    return faults.sample(HOST, vm, time.time(), source="test", online=online, used=used)


class Running:
    """A decider in this process, and the collector's side of the bus that feeds it."""

    def __init__(self, service: InProcess[DeciderMetrics], decider: Decider, feed: Client) -> None:
        self.service = service
        self.decider = decider
        self.feed = feed

    def received(self) -> float:
        return self.service.count("hotplug_messages_received_total", kind="metric")

    def decisions(self, mode: str) -> float:
        return self.service.count("hotplug_decider_decisions_total", mode=mode)

    async def send(self, *samples: MetricSample) -> None:
        for one in samples:
            await self.feed.publish(subjects.metrics(one.host, one.vm), encode(one))
        await self.feed.flush()

    async def handled(self) -> None:
        """Wait until the decider has handled every sample sent so far, and what it sent meanwhile is out."""
        before = self.received()
        await self.send(sample(PROBE, used=1.0))
        await eventually(lambda: self.received() > before, timeout=10, what="the probe sample")
        await self.service.nc.flush()  # what the decider published before the probe reached the server
        await self.feed.flush()  # and was passed on to the test's subscribers before this returns


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
def start_decider(serve: Serve, nc: Client) -> Start:
    async def start(settings: DeciderConfig | None = None) -> Running:
        settings = settings or DeciderConfig(name="d1")
        policy, rails = build_policy("threshold", {"threshold": {"sustain_s": "0"}, "guard": {"warmup_s": "0"}})
        made: list[Decider] = []

        async def body(ctx: ServiceContext[DeciderMetrics]) -> None:
            made.append(Decider(ctx, policy, rails, settings))
            await made[0].run()

        service = await serve(DeciderMetrics("decider"), body, HOST)

        # Ready once it takes samples: probes until one is counted (samples sent before it subscribed are lost).
        async def taking_samples() -> bool:
            if service.count("hotplug_messages_received_total", kind="metric") > 0:
                return True
            await nc.publish(subjects.metrics(HOST, PROBE), encode(sample(PROBE, used=1.0)))
            return False

        await eventually(taking_samples, timeout=30, interval=0.05, what="the decider taking samples")
        return Running(service, made[0], nc)

    return start


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
    stored = await nc.jetstream().get_last_msg(topology.EVENTS_STREAM, subjects.commands(HOST, VM))
    assert Decoder(ScaleCommand).decode(stored.data or b"") == command
    assert orders.proposals == []
    assert decider.decisions("command") == 1


async def test_dry_run_decides_but_sends_nothing(orders: Recorder, start_decider: Start) -> None:
    decider = await start_decider(DeciderConfig(name="d1", dry_run=True))
    await decider.send(sample(VM, used=2.0))
    await decider.handled()
    assert decider.decisions("dry-run") == 1  # it did decide to grow the VM
    assert orders.commands == []
    assert orders.proposals == []


async def test_shadow_proposes_for_every_sample_holding_included_and_commands_nothing(
    orders: Recorder, start_decider: Start
) -> None:
    decider = await start_decider(DeciderConfig(name="d1", shadow=True))
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
    leader = await start_decider(DeciderConfig(name="d1", lease="fleet"))
    standby = await start_decider(DeciderConfig(name="d2", lease="fleet"))  # a replica has a name of its own
    assert leader.decider.leadership.active and not standby.decider.leadership.active
    await leader.send(sample(VM, used=2.0))
    await eventually(lambda: orders.commands, timeout=10, what="a command")
    await leader.handled()
    await standby.handled()
    [command] = orders.commands
    assert (command.decider, command.term) == ("fleet", leader.decider.leadership.term)
    assert command.term >= 1
    assert standby.decisions("command") == 1  # the standby decided the same, and kept it to itself


async def test_a_full_hosts_grow_is_deferred_in_the_event_log_and_granted_once_a_shrink_shows(
    nc: Client, orders: Recorder, start_decider: Start
) -> None:
    """On a host of 4 vCPUs, all committed: an idle VM is shrunk at once, a busy one's grow waits (a Deferral
    stored in the event log) until the idle one's samples show the shrink, then is granted."""
    decider = await start_decider()
    full = "h2"
    seen: list[Deferral] = []
    decoder = Decoder(Deferral)

    async def on_deferral(msg: Msg) -> None:
        seen.append(decoder.decode(msg.data))

    await nc.subscribe(subjects.ALL_DEFERRALS, cb=on_deferral)
    state = HostState(time=time.time(), host=full, cpus=4, capacity_vcpus=4, committed_vcpus=4, free_vcpus=0)
    await nc.publish(subjects.hosts(full), encode(state))
    await eventually(
        lambda: decider.service.count("hotplug_messages_received_total", kind="host") >= 1,
        timeout=10,
        what="the host's state",
    )

    def on_full(vm: str, used: float, online: int) -> MetricSample:
        return faults.sample(full, vm, time.time(), source="test", online=online, used=used)

    await decider.send(on_full("idle", 0.1, 2), on_full("busy", 2.0, 2))
    await eventually(lambda: seen, timeout=10, what="a deferral")
    await decider.handled()
    assert [(c.vm, c.target_vcpus) for c in orders.commands] == [("idle", 1)]  # the shrink goes out at once
    [deferred] = seen
    assert (deferred.vm, deferred.action, deferred.wanted_vcpus, deferred.granted_vcpus) == (
        "busy",
        DeferralAction.DEFERRED,
        3,
        2,
    )
    await decider.send(on_full("idle", 0.1, 1), on_full("busy", 2.0, 2))  # the shrink shows
    await eventually(lambda: len(seen) == 2, timeout=10, what="the grant")
    await eventually(lambda: len(orders.commands) == 2, timeout=10, what="the grow")
    assert (orders.commands[1].vm, orders.commands[1].target_vcpus) == ("busy", 3)
    stored = await read_deferrals(nc.jetstream())
    assert [(d.vm, d.action) for d in stored] == [("busy", DeferralAction.DEFERRED), ("busy", DeferralAction.GRANTED)]
    assert stored == seen


async def test_a_malformed_sample_replaced_before_its_turn_is_dropped_as_malformed_not_shed(
    start_decider: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """The intake keeps each VM's newest sample undecoded until its turn; one a newer sample replaces is still
    judged, so a bad publisher on a busy VM's subject shows up as malformed, logged, not among the shed."""
    running = await start_decider()
    intake = running.decider.intake
    assert isinstance(intake, WholeFleet)
    subject = subjects.metrics(HOST, VM)
    dropped = {"name": "hotplug_messages_dropped_total", "kind": "metric"}
    shed_before = running.service.count(**dropped, reason="shed")
    # Taken in with no await between them: the decider's worker cannot take the first before the second replaces it.
    await intake._on_sample(Msg(running.feed, subject=subject, data=b"not json"))
    await intake._on_sample(Msg(running.feed, subject=subject, data=encode(sample(VM, used=0.5))))
    await intake._on_sample(Msg(running.feed, subject=subject, data=encode(sample(VM, used=0.6))))
    await running.handled()
    assert running.service.count(**dropped, reason="malformed") == 1
    assert running.service.count(**dropped, reason="shed") == shed_before + 1  # the good one the third replaced
    assert f"dropped metric on {subject}: malformed" in caplog.text


async def test_an_urgent_sample_is_decided_at_once_for_a_grow_and_never_for_a_shrink(
    orders: Recorder, start_decider: Start
) -> None:
    """Urgent samples travel as schema v3 and reach the engine marked: the busy VM's grow goes out on its urgent
    sample; the calm VM's shrink waits for its regular sample."""
    decider = await start_decider()
    await decider.send(
        msgspec.structs.replace(sample(VM, used=2.0), urgent=True),
        msgspec.structs.replace(sample("calm", used=0.1), urgent=True),
    )
    await eventually(lambda: orders.commands, timeout=10, what="the grow on the urgent sample")
    await decider.handled()
    assert [(c.vm, c.target_vcpus) for c in orders.commands] == [(VM, 3)]
    await decider.send(sample("calm", used=0.1))
    await eventually(lambda: len(orders.commands) == 2, timeout=10, what="the shrink on the regular sample")
    assert (orders.commands[1].vm, orders.commands[1].target_vcpus) == ("calm", 1)
