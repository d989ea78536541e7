"""The decider plans a host as a whole once it knows the host's capacity (HostState, or a host-full result):
a grow the host has no room for waits, a Deferral records when it starts and when it is granted, the
``[[vm]]`` rules' priority and preemptible reach the plan, and a host with room changes nothing. Driven in
process with stub contexts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from services.decider.registry import build_policy, parse_params
from services.decider.rulebook import RuleBook, build_rulebook
from services.decider.service import Decider, DeciderConfig, DeciderMetrics
from shared import subjects
from shared.codec import Decoder, encode
from shared.config.load import parse
from shared.messages import (
    Deferral,
    DeferralAction,
    ErrorCode,
    HostState,
    MemoryReading,
    MetricSample,
    Resource,
    ScaleCommand,
    ScaleResult,
)
from shared.units import GIB, MIB
from tests.stubs import FixedClock, RecordingJetStream, StubContext, StubOptions

# The threshold rule with nothing in its way: it orders on every busy or idle sample.
FREE = [
    "threshold.sustain_s=1",
    "guard.up_cooldown_s=0",
    "guard.down_cooldown_s=0",
    "guard.warmup_s=0",
    "guard.max_changes=1000",
]


class Harness:
    def __init__(self, rules: str = "") -> None:
        policy, rails = build_policy("threshold", parse_params(FREE))
        self.clock = FixedClock(0.0)
        self.metrics = DeciderMetrics("decider")
        self.js = RecordingJetStream()
        ctx = StubContext(StubOptions(self.clock), self.metrics, self.js)
        book = build_rulebook(parse(rules, Path("hotplug.toml")), "threshold", parse_params(FREE)) if rules else None
        self.decider = Decider(ctx, policy, rails, DeciderConfig(name="d1"), book or RuleBook.single(policy, rails))  # type: ignore[arg-type]

    def host(self, capacity: int, committed: int, t: float = 0.0) -> None:
        self.clock.t = t
        self.decider.handle_host(
            HostState(
                time=t,
                host="h",
                cpus=capacity,
                capacity_vcpus=capacity,
                committed_vcpus=committed,
                free_vcpus=capacity - committed,
            )
        )

    def sample(self, vm: str, vcpus: int, used: float, t: float) -> ScaleCommand | None:
        self.clock.t = t
        return self.decider.handle_sample(
            MetricSample(
                time=t,
                host="h",
                vm=vm,
                online_vcpus=vcpus,
                min_vcpus=1,
                max_vcpus=8,
                cpu_used_cores=used,
                interval_s=1.0,
                source="t",
            )
        )

    async def deferrals(self) -> list[Deferral]:
        await asyncio.gather(*self.decider._publishing)  # deferrals are stored by tasks of their own
        decoder = Decoder(Deferral)
        return [
            decoder.decode(data)
            for subject, data in zip(self.js.subjects, self.js.published, strict=True)
            if subject.startswith(subjects.DEFERRALS)
        ]

    def gauge(self, name: str) -> float:
        return sum(
            s.value
            for family in self.metrics.registry.collect()
            for s in family.samples
            if s.name == name and s.labels.get("host") == "h"
        )

    def held(self, reason: str) -> float:
        return sum(
            s.value
            for family in self.metrics.registry.collect()
            for s in family.samples
            if s.name == "hotplug_decider_held_total" and s.labels.get("reason") == reason
        )


async def test_a_grow_waits_for_room_and_is_granted_once_a_shrink_shows() -> None:
    h = Harness()
    h.host(capacity=4, committed=4)
    shrink = h.sample("idle", 2, 0.1, 1.0)
    assert shrink is not None and shrink.target_vcpus == 1  # a shrink is never held for room
    assert h.sample("busy", 2, 2.0, 1.0) is None  # wants 3; the idle VM's vCPU is not free yet
    assert h.held("host-full") == 1
    [deferred] = await h.deferrals()
    assert (deferred.vm, deferred.action, deferred.vcpus, deferred.wanted_vcpus, deferred.granted_vcpus) == (
        "busy",
        DeferralAction.DEFERRED,
        2,
        3,
        2,
    )
    assert deferred.reason == "host full: capacity 4, 4 committed; 1 of 1 wanted vCPUs deferred"
    assert (deferred.decider, deferred.since) == ("d1", 1.0)
    assert h.gauge("hotplug_decider_deferred_grows") == 1
    h.clock.t = 3.0
    assert h.gauge("hotplug_decider_oldest_deferral_seconds") == 2.0
    h.sample("idle", 1, 0.1, 3.0)  # the shrink shows
    grow = h.sample("busy", 2, 2.0, 3.0)
    assert grow is not None and grow.target_vcpus == 3
    _, granted = await h.deferrals()
    assert (granted.action, granted.wanted_vcpus, granted.granted_vcpus, granted.since) == (
        DeferralAction.GRANTED,
        3,
        3,
        1.0,
    )
    assert h.gauge("hotplug_decider_deferred_grows") == 0


async def test_a_host_with_room_decides_as_a_decider_that_knows_no_host() -> None:
    def run(h: Harness) -> list[tuple[str, int, str]]:
        out = []
        for t in range(1, 40):
            for vm, used in (("a", 2.0 if t % 10 < 5 else 0.2), ("b", 1.0 if t % 7 < 3 else 0.1)):
                size = sizes.setdefault((id(h), vm), 2)
                command = h.sample(vm, size, min(used * size / 2, size), float(t))
                if command is not None:
                    target = command.vcpu_change()[1]
                    sizes[(id(h), vm)] = target
                    out.append((vm, target, command.reason))
        return out

    sizes: dict[tuple[int, str], int] = {}
    roomy = Harness()
    roomy.host(capacity=64, committed=4)
    alone = run(Harness())
    assert alone and run(roomy) == alone
    assert await roomy.deferrals() == []


async def test_priority_and_preemptible_from_the_rules_reach_the_plan() -> None:
    h = Harness(
        """\
[[vm]]
match = "web"
priority = 5

[[vm]]
match = "batch"
preemptible = true
"""
    )
    h.host(capacity=4, committed=4)
    assert h.sample("batch", 3, 2.0, 1.0) is None  # 67 %: content with what it has
    assert h.sample("web", 1, 1.0, 1.0) is None  # wants 2: no room yet
    taken = h.sample("batch", 3, 2.0, 2.0)
    assert taken is not None and taken.target_vcpus == 2  # a preemptible VM gives way to a higher priority's need
    assert "preempted for a higher priority's need" in taken.reason
    [deferred] = await h.deferrals()
    assert (deferred.vm, deferred.priority) == ("web", 5)


async def test_a_host_full_result_teaches_the_hosts_capacity() -> None:
    h = Harness()
    h.sample("a", 2, 1.0, 1.0)
    assert "h" not in h.decider.planners
    result = ScaleResult(
        time=1.0,
        command_id="c1",
        target_vcpus=3,
        duration_s=0.0,
        actuator="actuator",
        host="h",
        vm="a",
        ok=False,
        error_code=ErrorCode.HOST_FULL,
        vcpus_before=2,
        vcpus_after=2,
        host_capacity_vcpus=3,
        host_committed_vcpus=3,
    )
    await h.decider._on_result(SimpleNamespace(subject=subjects.results("h", "a"), data=encode(result)))  # type: ignore[arg-type]
    assert h.decider.planners["h"].view.capacity == 3
    h.sample("b", 1, 1.0, 2.0)  # a VM the actuator counted in its 3: wants 2, and 2 + 2 > 3
    assert h.decider.planners["h"].deferred() == 1


async def test_a_vm_not_sampled_for_an_hour_is_forgotten_with_its_claim_and_series() -> None:
    """Jobs end and VMs move: a VM the collector no longer samples leaves the decider's state, its host's plan and
    the VM gauge, instead of piling up for the decider's lifetime."""
    h = Harness()
    h.host(capacity=8, committed=4)
    h.sample("ended", 2, 0.5, 1.0)
    h.sample("running", 2, 0.5, 1.0)
    assert set(h.decider.engines) == {("h", "ended"), ("h", "running")}
    for t in range(2, 3600, 60):
        h.sample("running", 2, 0.5, float(t))
    assert ("h", "ended") in h.decider.engines  # not an hour yet
    for t in range(3600, 3600 + 400, 60):
        h.sample("running", 2, 0.5, float(t))
    assert set(h.decider.engines) == {("h", "running")}
    assert "ended" not in h.decider.planners["h"].vms
    assert h.decider.metrics.registry.get_sample_value("hotplug_decider_vms") == 1


def memory_sample(vm: str, size: int, used: int, swap: float, t: float) -> MetricSample:
    reading = MemoryReading(
        size_bytes=size, min_bytes=GIB, max_bytes=16 * GIB, used_bytes=used, available_bytes=size - used,
        swap_in_bytes_per_s=swap, psi_some=0.0,
    )  # fmt: skip
    return MetricSample(
        time=t, host="h", vm=vm, online_vcpus=2, min_vcpus=1, max_vcpus=8, cpu_used_cores=1.0, interval_s=1.0,
        source="t", memory=reading,
    )  # fmt: skip


def memory_host(capacity: int | None, committed: int | None, t: float = 0.0) -> HostState:
    return HostState(
        time=t, host="h", cpus=8, capacity_vcpus=8, committed_vcpus=4, free_vcpus=4,
        memory_bytes=None if capacity is None else capacity + GIB, capacity_memory_bytes=capacity,
        committed_memory_bytes=committed,
    )  # fmt: skip


async def memory_commands(h: Harness) -> list[ScaleCommand]:
    await asyncio.gather(*h.decider._publishing)
    decoder = Decoder(ScaleCommand)
    return [
        command
        for subject, data in zip(h.js.subjects, h.js.published, strict=True)
        if subject.startswith(subjects.COMMANDS) and (command := decoder.decode(data)).resource is Resource.MEMORY
    ]


async def test_memory_grows_are_cut_to_the_hosts_memory_or_deferred_and_recorded_as_memory_deferrals() -> None:
    h = Harness()
    h.decider.handle_host(memory_host(10 * GIB, 8 * GIB))
    h.clock.t = 1.0
    h.decider.handle_sample(memory_sample("swapping", 4 * GIB, 3900 * MIB, 1e6, 1.0))  # wants 8 GiB
    h.decider.handle_sample(memory_sample("margin", 4 * GIB, 3900 * MIB, 0.0, 1.0))  # wants about 5 GiB
    [cut] = await memory_commands(h)  # the margin VM's grow was not sent: the actuator would refuse it
    assert (cut.vm, cut.memory_change()) == ("swapping", (4 * GIB, 6 * GIB))
    assert "host memory full: capacity 10GiB, 8GiB committed; 2GiB of 4GiB wanted deferred" in cut.reason
    assert h.held("host-full") == 1
    started = {d.vm: d for d in await h.deferrals()}
    # Under a subject token of their own: the newest Deferral of each subject is the newest of each resource.
    assert {s for s in h.js.subjects if s.startswith(subjects.DEFERRALS)} == {
        f"{subjects.DEFERRALS}.h.swapping.memory",
        f"{subjects.DEFERRALS}.h.margin.memory",
    }
    assert started["swapping"].resource is Resource.MEMORY
    assert started["swapping"].sizes() == (4 * GIB, 8 * GIB, 6 * GIB)
    assert started["margin"].sizes()[0::2] == (4 * GIB, 4 * GIB) and started["margin"].vcpus is None
    assert h.gauge("hotplug_decider_deferred_grows") == 2
    assert h.decider.metrics.registry.get_sample_value(
        "hotplug_decider_deferred_grows", {"host": "h", "resource": "memory"}
    ) == 2  # fmt: skip


async def test_a_host_whose_memory_is_not_known_grows_memory_as_before() -> None:
    h = Harness()
    h.decider.handle_host(memory_host(None, None))
    h.clock.t = 1.0
    h.decider.handle_sample(memory_sample("swapping", 4 * GIB, 3900 * MIB, 1e6, 1.0))
    [grow] = await memory_commands(h)
    assert grow.memory_change() == (4 * GIB, 8 * GIB) and not h.decider.memory_ledgers


async def test_a_host_full_memory_result_teaches_the_hosts_memory() -> None:
    h = Harness()
    result = ScaleResult(
        time=1.0, command_id="m1", duration_s=0.0, actuator="actuator", host="h", vm="a", ok=False,
        error_code=ErrorCode.HOST_FULL, vcpus_before=None, vcpus_after=None, resource=Resource.MEMORY,
        target_memory_bytes=8 * GIB, memory_before_bytes=4 * GIB, memory_after_bytes=4 * GIB,
        host_capacity_memory_bytes=9 * GIB, host_committed_memory_bytes=9 * GIB,
    )  # fmt: skip
    await h.decider._on_result(SimpleNamespace(subject=subjects.results("h", "a"), data=encode(result)))  # type: ignore[arg-type]
    assert h.decider.memory_ledgers["h"].view.capacity == 9 * GIB
    h.clock.t = 2.0
    h.decider.handle_sample(memory_sample("b", 4 * GIB, 3900 * MIB, 0.0, 2.0))  # counted in the 9 GiB: no room
    assert await memory_commands(h) == [] and h.decider.memory_ledgers["h"].deferred() == 1


async def test_a_host_whose_memory_is_no_longer_known_is_no_longer_planned_in_memory() -> None:
    h = Harness()
    h.decider.handle_host(memory_host(8 * GIB, 8 * GIB))
    h.clock.t = 1.0
    h.decider.handle_sample(memory_sample("margin", 4 * GIB, 3900 * MIB, 0.0, 1.0))
    assert await memory_commands(h) == []
    h.decider.handle_host(memory_host(None, None, t=1.5))
    [dropped] = [d for d in await h.deferrals() if d.action is DeferralAction.DROPPED]
    assert dropped.resource is Resource.MEMORY and not h.decider.memory_ledgers
    samples = h.decider.metrics.registry.get_sample_value
    assert samples("hotplug_decider_deferred_grows", {"host": "h", "resource": "memory"}) is None
    h.clock.t = 2.0
    h.decider.handle_sample(memory_sample("margin", 4 * GIB, 3900 * MIB, 0.0, 2.0))
    [grow] = await memory_commands(h)
    assert grow.memory_change()[0] == 4 * GIB
