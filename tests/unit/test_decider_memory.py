"""The decider's memory lane: the memory engine's orders, holds and in-flight order, and the decider routing memory
results to it (never to the vCPU engine) and sending memory commands beside vCPU ones."""

from __future__ import annotations

import itertools

import msgspec

from services.decider.memory.engine import MemoryEngine
from services.decider.memory.policy import MemoryPolicy
from services.decider.memory.settings import MemorySettings
from services.decider.modes import Commands, Orders
from services.decider.registry import build_policy, parse_params
from services.decider.service import Decider, DeciderConfig, DeciderMetrics
from shared import subjects
from shared.codec import encode
from shared.messages import ErrorCode, MemoryReading, MetricSample, Resource, ScaleCommand, ScaleResult
from shared.units import GIB, MIB
from tests.stubs import FixedClock, StubContext, StubOptions

POLICY = MemoryPolicy(MemorySettings(window_samples=60, shrink_interval_s=30.0))


def reading(size: int, used: int, swap: float | None = 0.0) -> MemoryReading:
    return MemoryReading(
        size_bytes=size, min_bytes=GIB, max_bytes=16 * GIB, used_bytes=used, available_bytes=size - used,
        swap_in_bytes_per_s=swap, psi_some=0.0,
    )  # fmt: skip


def refusal(code: ErrorCode, command_id: str = "m1", time: float = 10.0) -> ScaleResult:
    return ScaleResult(
        command_id=command_id, time=time, host="h", vm="a", ok=False, vcpus_before=None, vcpus_after=None,
        duration_s=0.0, actuator="act", resource=Resource.MEMORY, error_code=code, memory_before_bytes=4 * GIB,
        memory_after_bytes=4 * GIB, target_memory_bytes=3 * GIB,
    )  # fmt: skip


def test_a_thin_margin_is_grown_at_once_and_the_order_stays_in_flight_until_seen() -> None:
    engine = MemoryEngine(POLICY)
    decision = engine.step(1.0, reading(4 * GIB, 3900 * MIB), 1.0)
    assert decision is not None and decision.resource is Resource.MEMORY and decision.target > 4 * GIB
    engine.mark_sent(decision.target, until=31.0, command_id="m1")
    assert engine.step(2.0, reading(4 * GIB, 3950 * MIB), 1.0) is None  # in flight: no second order
    assert engine.step(3.0, reading(decision.target, 3950 * MIB), 1.0) is None and engine.pending_target is None


def test_a_vm_long_idle_gives_memory_back_in_bounded_steps_never_below_its_use() -> None:
    engine = MemoryEngine(POLICY)
    size, orders = 8 * GIB, []
    for t in range(1, 400):
        decision = engine.step(float(t), reading(size, GIB), 1.0)
        if decision is not None:
            assert decision.target >= size * 0.75 - 2 * MIB  # at most a quarter per order
            assert decision.target >= GIB * 1.25  # never below use plus headroom
            orders.append((t, decision.target))
            size = decision.target
    assert orders and orders[0][0] >= 60  # not before a window of evidence
    assert all(b - a >= 30 for (a, _), (b, _) in itertools.pairwise(orders))


def test_an_urgent_sample_may_grow_memory_but_never_shrinks_it() -> None:
    idle, urgent_idle = MemoryEngine(POLICY), MemoryEngine(POLICY)
    first_shrink = None
    for t in range(1, 100):
        decision = idle.step(float(t), reading(8 * GIB, GIB), 1.0)
        first_shrink = first_shrink or decision
        assert urgent_idle.step(float(t), reading(8 * GIB, GIB), 1.0, urgent=True) is None
    assert first_shrink is not None and first_shrink.target < 8 * GIB  # the regular samples gave back
    # the next regular sample shrinks at once: the urgent ones did not restart the shrink's interval
    regular = urgent_idle.step(100.0, reading(8 * GIB, GIB), 1.0)
    assert regular is not None and regular.target == first_shrink.target
    grow = MemoryEngine(POLICY).step(1.0, reading(4 * GIB, 3900 * MIB), 1.0, urgent=True)
    assert grow is not None and grow.target > 4 * GIB


def test_a_below_used_refusal_holds_shrinks_only_and_a_pause_holds_all() -> None:
    engine = MemoryEngine(POLICY)
    engine.mark_sent(3 * GIB, until=40.0, command_id="m1")
    hold = engine.learn_result(refusal(ErrorCode.BELOW_USED))
    assert hold is not None and hold.direction == -1 and engine.pending_target is None
    assert engine.step(11.0, reading(4 * GIB, 3900 * MIB), 1.0) is not None  # a grow is not held
    paused = MemoryEngine(POLICY)
    assert paused.step(1.0, reading(4 * GIB, 3900 * MIB), 1.0, paused="by ops") is None
    assert paused.held is not None and paused.held.label == "paused"


def test_a_member_that_takes_the_vm_over_decides_as_the_first_would_have() -> None:
    """A sharded group's handover: the snapshot carries the rule's windows (a burst seen, the evidence so far), the
    order in flight and the holds, so the new owner neither waits a fresh window nor forgets the burst."""
    first = MemoryEngine(POLICY)
    size = 8 * GIB
    for t, used in enumerate([GIB, 3 * GIB, GIB, *[GIB] * 40], start=1):  # a 2 GiB rise between two samples
        assert first.step(float(t), reading(size, used), 1.0) is None
    first.mark_sent(7 * GIB, until=100.0, command_id="m9")
    first.learn_result(refusal(ErrorCode.BELOW_USED))  # a shrink refused: shrinks held for a while
    taken_over = MemoryEngine(POLICY)
    assert taken_over.restore(first.snapshot())
    assert (taken_over.state.rises.max(), taken_over.state.window.max()) == (2 * GIB, 3 * GIB)
    assert taken_over.holds == first.holds and taken_over.pending_id == first.pending_id
    assert (taken_over.state.last_used, taken_over.state.used_since) == (first.state.last_used, 43.0)
    fresh = MemoryEngine(POLICY)
    made: dict[str, list[tuple[int, int]]] = {"first": [], "taken over": [], "fresh": []}
    for t in range(44, 200):
        for name, engine in (("first", first), ("taken over", taken_over), ("fresh", fresh)):
            decision = engine.step(float(t), reading(size, GIB), 1.0)
            if decision is not None:
                made[name].append((t, decision.target))
    assert made["first"] and made["taken over"] == made["first"]
    assert made["fresh"] != made["first"]  # without the state: another window of evidence, and no rise kept
    assert all(target >= 3 * GIB for _, target in made["taken over"])  # used 1 GiB + the 2 GiB rise


def test_a_snapshot_from_before_used_since_measures_the_next_rise_from_its_last_sample() -> None:
    engine = MemoryEngine(POLICY)
    for t in (1.0, 2.0):
        engine.step(t, reading(8 * GIB, GIB), 1.0)
    old = msgspec.msgpack.decode(engine.snapshot())
    del old["used_since"]
    taken_over = MemoryEngine(POLICY)
    assert taken_over.restore(msgspec.msgpack.encode(old))
    assert (taken_over.state.last_used, taken_over.state.used_since) == (GIB, 2.0)


def test_a_snapshot_that_does_not_decode_changes_nothing() -> None:
    engine = MemoryEngine(POLICY)
    engine.step(1.0, reading(8 * GIB, GIB), 1.0)
    before = engine.snapshot()
    assert not engine.restore(b"not a snapshot")
    assert engine.snapshot() == before


def test_orders_build_a_memory_command_on_the_size_the_sample_saw() -> None:
    sample = MetricSample(
        time=5.0, host="h", vm="a", online_vcpus=2, min_vcpus=1, max_vcpus=4, cpu_used_cores=1.0, interval_s=1.0,
        source="s", memory=reading(4 * GIB, GIB),
    )  # fmt: skip
    command = Orders("d").make(sample, 6 * GIB, "grow", 5.0, 35.0, Resource.MEMORY)
    assert command.memory_change() == (4 * GIB, 6 * GIB) and command.target_vcpus is None
    vcpus = Orders("d").make(sample, 3, "grow", 5.0, 35.0)
    assert vcpus.vcpu_change() == (2, 3) and vcpus.target_memory_bytes is None


class _Msg:
    def __init__(self, subject: str, data: bytes) -> None:
        self.subject, self.data = subject, data


def _decider() -> tuple[Decider, list[ScaleCommand], FixedClock]:
    policy, rails = build_policy("threshold", parse_params([]))
    clock = FixedClock(0.0)
    decider = Decider(
        StubContext(StubOptions(clock, host="h"), DeciderMetrics("decider")),  # type: ignore[arg-type]
        policy,
        rails,
        DeciderConfig(),
        memory_policy=POLICY,
    )
    sent: list[ScaleCommand] = []
    assert isinstance(decider.outlet, Commands)
    decider.outlet.publish = sent.append
    return decider, sent, clock


def _sample(t: float, memory: MemoryReading | None) -> MetricSample:
    return MetricSample(
        time=t, host="h", vm="a", online_vcpus=2, min_vcpus=1, max_vcpus=4, cpu_used_cores=1.0, interval_s=1.0,
        source="s", memory=memory,
    )  # fmt: skip


async def test_the_decider_sends_memory_orders_and_their_refusals_hold_memory_only() -> None:
    decider, sent, clock = _decider()
    clock.t = 1.0
    decider.handle_sample(_sample(1.0, reading(4 * GIB, 3900 * MIB)))
    (grow,) = sent
    assert grow.resource is Resource.MEMORY and grow.memory_change()[0] == 4 * GIB
    refused = msgspec.structs.replace(refusal(ErrorCode.PARTIAL, grow.id, 1.5), memory_before_bytes=4 * GIB)
    await decider._on_result(_Msg(subjects.results("h", "a"), encode(refused)))  # type: ignore[arg-type]
    memory = decider.memory_engines[("h", "a")]
    assert memory.holds and memory.pending_target is None
    assert not decider.engines[("h", "a")].holds  # the vCPU lane is not held by a memory refusal


def test_with_cpu_only_no_memory_order_goes_out() -> None:
    policy, rails = build_policy("threshold", parse_params([]))
    decider = Decider(
        StubContext(StubOptions(FixedClock(1.0), host="h"), DeciderMetrics("decider")),  # type: ignore[arg-type]
        policy,
        rails,
        DeciderConfig(cpu_only=True),
    )
    sent: list[ScaleCommand] = []
    assert isinstance(decider.outlet, Commands)
    decider.outlet.publish = sent.append
    decider.handle_sample(_sample(1.0, reading(4 * GIB, 3900 * MIB)))
    assert [c for c in sent if c.resource is Resource.MEMORY] == [] and not decider.memory_engines
