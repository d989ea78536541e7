"""Refusals respected, a change budget and a warm-up: the pure core of each (decider engine, guard, refusal holds;
the actuator's retry advice), one error code at a time."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from services.actuator.checks import rate_limited
from services.actuator.retry import RULES, Backoff, Rule, retry_after
from services.actuator.service import Actuator, ActuatorConfig, ActuatorMetrics
from services.decider import refusals
from services.decider.engine import Snapshot, VmEngine
from services.decider.guard import GuardRails, GuardState
from services.decider.policies.base import Observation
from services.decider.registry import build_policy, parse_params
from services.decider.service import Decider, DeciderConfig, DeciderMetrics
from shared.messages import ErrorCode, MetricSample, ScaleCommand, ScaleResult
from tests.stubs import FixedClock, StubContext, StubOptions

# Rails that let the threshold rule (sustain_s=1) order on every sample, so only the mechanism under test holds it.
FREE = [
    "threshold.sustain_s=1",
    "guard.up_cooldown_s=0",
    "guard.down_cooldown_s=0",
    "guard.warmup_s=0",
    "guard.max_changes=1000",
]


def engine(*params: str) -> VmEngine:
    policy, rails = build_policy("threshold", parse_params([*FREE, *params]))
    return VmEngine(policy, rails)


def busy(t: float, vcpus: int = 2, hi: int = 8) -> Observation:
    """Every vCPU busy: the threshold rule wants one more."""
    return Observation(time=t, vcpus=vcpus, min_vcpus=1, max_vcpus=hi, used_cores=float(vcpus), interval_s=1.0)


def idle(t: float, vcpus: int = 4) -> Observation:
    """Nothing runs: the threshold rule wants one fewer."""
    return Observation(time=t, vcpus=vcpus, min_vcpus=1, max_vcpus=8, used_cores=0.0, interval_s=1.0)


def result(
    code: ErrorCode | None,
    t: float,
    *,
    command_id: str = "c1",
    before: int | None = 2,
    after: int | None = 2,
    target: int = 3,
    **extra: Any,
) -> ScaleResult:
    return ScaleResult(
        command_id=command_id,
        time=t,
        host="h",
        vm="v",
        ok=code is None,
        vcpus_before=before,
        vcpus_after=after,
        target_vcpus=target,
        duration_s=0.0,
        actuator="a",
        error_code=code,
        **extra,
    )


def first_order_after(e: VmEngine, start: float, until: float, make: Any = busy, step: float = 0.5) -> float | None:
    """The first sample time in [start, until] at which the engine orders again (samples every ``step`` s)."""
    t = start
    while t <= until:
        if e.step(make(t)) is not None:
            return t
        t += step
    return None


def refused_once(code: ErrorCode, **extra: Any) -> VmEngine:
    """An engine whose order 2 -> 3 vCPUs, sent at t=0, was refused with ``code`` at t=10."""
    e = engine()
    decision = e.step(busy(0.0))
    assert decision is not None and decision.target == 3
    e.mark_sent(3, until=1000.0, command_id="c1", time=0.0)
    e.learn_result(result(code, 10.0, **extra), now=10.0)
    return e


# What each refusal allows, from an actuator that says nothing about when to ask again (no retry_after): the
# decider's own minimum hold in seconds after the result, and whether it also waits for a newer sample.
OLD_ACTUATOR_HOLDS: dict[ErrorCode, tuple[float, bool]] = {
    ErrorCode.EXPIRED: (0, False),
    ErrorCode.STALE_VIEW: (0, True),
    ErrorCode.SUPERSEDED: (0, False),
    ErrorCode.STALE_TERM: (0, False),
    ErrorCode.OUT_OF_BOUNDS: (60, False),  # no allowed sizes named: the engine cannot keep inside them
    ErrorCode.RATE_LIMITED: (60, False),  # the window is not said either: the actuator's default
    ErrorCode.WRONG_HOST: (600, False),
    ErrorCode.VM_NOT_FOUND: (10, True),
    ErrorCode.VM_NOT_RUNNING: (10, True),
    ErrorCode.HOTPLUG_DISABLED: (600, False),
    ErrorCode.CPU_ID_OUT_OF_RANGE: (600, False),
    ErrorCode.ALREADY_ATTACHED: (30, False),
    ErrorCode.NOT_ATTACHED: (30, False),
    ErrorCode.CPU0: (600, False),
    ErrorCode.GUEST_REFUSED: (30, False),
    ErrorCode.NOT_VERIFIED: (30, False),
    ErrorCode.HOTPLUG_BUDGET: (600, False),
    ErrorCode.TIMEOUT: (30, False),
    ErrorCode.UNKNOWN: (30, False),
    ErrorCode.PAUSED: (10, False),
    ErrorCode.HOST_FULL: (2, False),
    ErrorCode.BELOW_USED: (10, False),
    ErrorCode.PARTIAL: (30, False),
}


def test_every_error_code_has_a_rule_on_both_sides() -> None:
    assert set(OLD_ACTUATOR_HOLDS) == set(ErrorCode)
    assert set(RULES) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_no_order_is_repeated_faster_than_its_refusal_allows(code: ErrorCode) -> None:
    """The same order (2 -> 3), wanted on every sample after the refusal at t=10, goes out again only once the
    decider's minimum hold for the code is over, and (where the code calls for it) a sample newer than the
    result has come; then it does go out."""
    wait, newer = OLD_ACTUATOR_HOLDS[code]
    e = refused_once(code)
    # A sample stamped at the result's own time (collected before it) does not show the VM back.
    first = first_order_after(e, 10.0, 10.0 + wait + 5)
    assert first is not None, f"{code}: never ordered again"
    earliest = 10.0 + wait
    assert first >= earliest, f"{code}: ordered again at {first}, before {earliest}"
    if newer:
        assert first > 10.0, f"{code}: ordered again on a sample no newer than the refusal"
    assert first <= max(earliest, 10.0) + 0.5, f"{code}: held longer than needed (until {first})"
    assert e.held is None


@pytest.mark.parametrize("code", list(ErrorCode))
def test_a_held_order_is_counted_by_its_error_code(code: ErrorCode) -> None:
    wait, newer = OLD_ACTUATOR_HOLDS[code]
    if not wait and not newer:
        return  # nothing to hold
    e = refused_once(code)
    assert e.step(busy(10.0)) is None
    assert e.held is not None and e.held.label == code.value


def test_a_decider_holds_as_long_as_the_actuator_says_when_that_is_longer() -> None:
    e = refused_once(ErrorCode.RATE_LIMITED, retry_after=17.0)
    assert first_order_after(e, 10.5, 40.0) == 27.0
    e = refused_once(ErrorCode.GUEST_REFUSED, retry_after=240.0)
    assert first_order_after(e, 10.5, 400.0, step=5.0) == 250.5
    # ... and never shorter than its own minimum, whatever the actuator says
    e = refused_once(ErrorCode.HOTPLUG_DISABLED, retry_after=0.0)
    assert first_order_after(e, 10.5, 100.0) is None


def test_only_a_refusal_that_names_its_code_holds_the_vm() -> None:
    """``ok`` and ``error_code`` are separate fields, and an actuator of another build may set one without the
    other: an ok result never holds the VM, whatever code it carries, and a failure without a code holds nothing
    (there is no rule to hold it by) rather than stopping the decider."""
    refused = result(ErrorCode.RATE_LIMITED, 10.0)
    assert refusals.hold_for(refused, 1) is not None
    assert refusals.hold_for(result(None, 10.0), 1) is None
    assert refusals.hold_for(msgspec.structs.replace(refused, ok=True), 1) is None
    assert refusals.hold_for(msgspec.structs.replace(result(None, 10.0), ok=False), 1) is None


def test_a_one_direction_refusal_holds_the_way_it_was_asked_and_any_other_holds_both() -> None:
    """A guest that refused a plug may still take an unplug: that refusal holds only plugs. A refusal of an order
    that asked no change, or of one whose size before is unknown, names no way: it holds both, as every refusal
    whose code is not one-directional does."""

    def direction(code: ErrorCode, before: int | None, target: int) -> int:
        hold = refusals.hold_for(result(code, 10.0, before=before, target=target), 1)
        assert hold is not None
        return hold.direction

    refused = ErrorCode.GUEST_REFUSED
    assert (direction(refused, 2, 3), direction(refused, 3, 2)) == (1, -1)
    assert (direction(refused, 3, 3), direction(refused, None, 3)) == (0, 0)
    assert direction(ErrorCode.RATE_LIMITED, 2, 3) == 0


def test_rate_limited_with_the_window_named_holds_for_that_window() -> None:
    e = refused_once(ErrorCode.RATE_LIMITED, rate_limit_changes=6, rate_limit_window_s=20.0)
    assert first_order_after(e, 10.5, 60.0) == 30.0


def test_out_of_bounds_with_allowed_sizes_keeps_orders_inside_them_without_holding_the_vm() -> None:
    e = refused_once(ErrorCode.OUT_OF_BOUNDS, allowed_min_vcpus=1, allowed_max_vcpus=2, retry_after=0.0)
    assert first_order_after(e, 10.5, 200.0) is None  # 3 is refused: never asked again while believed
    shrink = e.step(idle(201.0, vcpus=2))  # an order inside the sizes goes out at once
    assert shrink is not None and shrink.target == 1


def test_a_guest_that_refuses_an_unplug_still_gets_a_plug() -> None:
    e = engine()
    assert e.step(idle(0.0)) is not None
    e.mark_sent(3, until=1000.0, command_id="c1", time=0.0)
    e.learn_result(result(ErrorCode.GUEST_REFUSED, 1.0, before=4, after=4, target=3), now=1.0)
    assert e.step(idle(2.0)) is None and e.held is not None and e.held.label == "guest-refused"
    grow = e.step(busy(3.0, vcpus=4))
    assert grow is not None and grow.target == 5


def test_guest_refused_backs_off_doubling_in_the_decider_and_a_change_resets_it() -> None:
    """An actuator that sends no retry_after: the decider's own back-off, 30 s doubling to 600 s."""
    e = engine()
    t = 0.0
    waits = []
    assert e.step(idle(t)) is not None
    for i in range(7):
        e.mark_sent(3, until=t + 1000, command_id=f"c{i}", time=t)
        e.learn_result(result(ErrorCode.GUEST_REFUSED, t, command_id=f"c{i}", before=4, after=4, target=3), now=t)
        again = first_order_after(e, t + 1, t + 2000, make=idle, step=1.0)
        assert again is not None
        waits.append(again - t)
        t = again  # the order given then is the next one refused
    assert waits == [30, 60, 120, 240, 480, 600, 600]
    # a successful change resets it
    e.mark_sent(3, until=t + 1000, command_id="ok", time=t)
    e.learn_result(result(None, t, command_id="ok", before=4, after=3, target=3), now=t)
    assert e.step(idle(t + 1, vcpus=3)) is not None
    e.mark_sent(2, until=t + 1000, command_id="no", time=t + 1)
    e.learn_result(result(ErrorCode.GUEST_REFUSED, t + 1, command_id="no", before=3, after=3, target=2), now=t + 1)
    assert first_order_after(e, t + 2, t + 100, make=lambda s: idle(s, vcpus=3), step=1.0) == t + 31


def test_the_actuator_advises_a_guest_refused_back_off_doubling_to_ten_minutes_reset_by_a_change() -> None:
    backoff = Backoff()
    waits = [retry_after(ErrorCode.GUEST_REFUSED, "v", now=0.0, backoff=backoff) for _ in range(7)]
    assert waits == [30, 60, 120, 240, 480, 600, 600]
    assert retry_after(ErrorCode.GUEST_REFUSED, "other", now=0.0, backoff=backoff) == 30  # per VM
    backoff.succeeded("v")
    assert retry_after(ErrorCode.GUEST_REFUSED, "v", now=0.0, backoff=backoff) == 30


def test_the_actuator_advises_no_wait_where_nothing_stands_in_the_way() -> None:
    for code, rule in RULES.items():
        wait = retry_after(code, "v", now=0.0, backoff=Backoff(), retry_at=None)
        assert (wait == 0) == (rule in (Rule.NOW, Rule.RATE_WINDOW)), code
    assert RULES[ErrorCode.SUPERSEDED] is RULES[ErrorCode.EXPIRED] is RULES[ErrorCode.STALE_VIEW] is Rule.NOW


def test_rate_limited_says_when_the_window_frees() -> None:
    for changes, limit in (([50.0, 90.0], 2), ([45.0, 50.0, 90.0], 2), ([90.0, 50.0, 45.0], 3), ([99.0], 1)):
        refusal = rate_limited(changes, now=100.0, limit=limit, window_s=60.0)
        assert refusal is not None and refusal.retry_at is not None
        assert rate_limited(changes, now=refusal.retry_at, limit=limit, window_s=60.0) is None
        assert rate_limited(changes, now=refusal.retry_at - 0.01, limit=limit, window_s=60.0) is not None
        assert retry_after(refusal.code, "v", now=100.0, backoff=Backoff(), retry_at=refusal.retry_at) == (
            refusal.retry_at - 100.0
        )


def order(command_id: str, target: int = 3) -> ScaleCommand:
    return ScaleCommand(
        id=command_id,
        time=0.0,
        host="h",
        vm="v",
        target_vcpus=target,
        seen_vcpus=2,
        decider="d",
        reason="r",
        expires_at=1e9,
    )


def test_every_actuator_result_says_when_to_ask_again_and_its_rate_limit() -> None:
    ctx = StubContext(StubOptions(FixedClock(100.0)), ActuatorMetrics("actuator"))
    actuator = Actuator(ctx, driver=None, config=ActuatorConfig(max_changes=3, rate_window_s=45.0))  # type: ignore[arg-type]
    from services.actuator.checks import Refusal

    guest = Refusal(ErrorCode.GUEST_REFUSED, "no")
    refused = [actuator.ledger.result(order(f"c{i}"), 100.0, 0.0, 2, 2, guest) for i in range(3)]
    assert [r.retry_after for r in refused] == [30, 60, 120]
    assert all((r.rate_limit_changes, r.rate_limit_window_s) == (3, 45.0) for r in refused)
    ok = actuator.ledger.result(order("ok"), 100.0, 0.0, 2, 3, None)
    assert ok.retry_after is None and ok.rate_limit_changes == 3
    assert actuator.ledger.result(order("again"), 100.0, 0.0, 3, 3, guest).retry_after == 30  # reset by the change
    limited = actuator.ledger.result(
        order("lim"), 100.0, 0.0, 2, 2, Refusal(ErrorCode.RATE_LIMITED, "x", retry_at=112.5)
    )
    assert limited.retry_after == 12.5
    superseded = actuator.ledger.refuse(order("sup"), Refusal(ErrorCode.SUPERSEDED, "newer"), 100.0)
    assert superseded.retry_after == 0 and superseded.rate_limit_window_s == 45.0


def flip_flop(e: VmEngine, until: float, results: bool, **advertised: Any) -> list[float]:
    """Drive ``e`` with load that wants a change on every sample (busy when small, idle when large); the actuator
    obeys each order (the next sample shows it) and, with ``results``, answers each with an ok result. The
    times at which orders went out."""
    sent: list[float] = []
    vcpus, t, seq = 2, 0.0, 0
    while t < until:
        obs = busy(t, vcpus) if vcpus <= 2 else idle(t, vcpus)
        decision = e.step(obs)
        if decision is not None:
            seq += 1
            e.mark_sent(decision.target, until=t + 30, command_id=f"c{seq}", time=t)
            sent.append(t)
            if results:
                e.learn_result(
                    result(
                        None,
                        t + 0.2,
                        command_id=f"c{seq}",
                        before=vcpus,
                        after=decision.target,
                        target=decision.target,
                        **advertised,
                    ),
                    now=t + 0.2,
                )
            vcpus = decision.target
        t += 1.0
    return sent


def most_in_a_window(times: list[float], window: float) -> int:
    return max((sum(1 for u in times if t <= u < t + window) for t in times), default=0)


def test_the_change_budget_caps_changes_per_window() -> None:
    e = engine("guard.max_changes=3", "guard.budget_window_s=60")
    sent = flip_flop(e, 600, results=False)
    assert most_in_a_window(sent, 60) == 3
    assert len(sent) >= 25  # it does go on changing, at the budget's pace
    fresh = engine("guard.max_changes=3", "guard.budget_window_s=60")
    assert flip_flop(fresh, 4, results=False) == [0.0, 1.0, 2.0]
    assert fresh.step(busy(4.0)) is None
    assert fresh.held is not None and fresh.held.label == "change-budget"
    assert "held: change budget (3 of 3 in 60 s)" in fresh.held.reason


def test_the_budget_keeps_within_a_lower_rate_limit_the_actuator_advertised() -> None:
    own = engine("guard.max_changes=4", "guard.budget_window_s=60")
    assert most_in_a_window(flip_flop(own, 600, results=True), 60) == 4
    learned = engine("guard.max_changes=4", "guard.budget_window_s=60")
    sent = flip_flop(learned, 600, results=True, rate_limit_changes=2, rate_limit_window_s=60.0)
    assert most_in_a_window(sent, 60) == 2
    # the actuator counts a change from when it ran; the decider from when that was known, never earlier
    windows = [e - s for s, e in zip(sent, sent[2:], strict=False)]
    assert min(windows) >= 60.2


def test_an_order_that_changed_nothing_does_not_count_against_the_budget() -> None:
    e = engine("guard.max_changes=1", "guard.budget_window_s=60")
    assert e.step(busy(0.0)) is not None
    e.mark_sent(3, until=30.0, command_id="c1", time=0.0)
    assert e.step(busy(1.0)) is None  # pending
    e.learn_result(result(None, 1.5, before=2, after=2, target=3), now=1.5)  # already there: nothing changed
    e.mark_done()
    assert e.step(busy(2.0)) is not None
    e.mark_sent(3, until=30.0, command_id="c2", time=2.0)
    e.learn_result(result(None, 2.5, command_id="c2", before=2, after=3, target=3), now=2.5)
    assert e.step(busy(3.0, vcpus=3)) is None and e.held is not None and e.held.label == "change-budget"


def test_an_order_that_expired_unseen_counts_against_the_budget_from_its_expiry() -> None:
    """No sample showed the order's size before it expired: had it run, it ran by then, and the actuator counts a
    change from when it ran; so the decider counts it from the expiry, not from when it was sent."""
    e = engine("guard.max_changes=1", "guard.budget_window_s=60")
    assert e.step(busy(0.0)) is not None
    e.mark_sent(3, until=30.0, command_id="c1", time=0.0)
    assert e.step(busy(10.0)) is None  # pending: the sample still shows 2 vCPUs
    assert e.step(busy(30.0)) is None  # expired: the budget's one change, counted from 30 s
    assert e.held is not None and e.held.label == "change-budget"
    assert first_order_after(e, 30.5, 200.0) == 90.0


def test_an_order_that_was_never_stored_does_not_count_against_the_budget() -> None:
    e = engine("guard.max_changes=1")
    assert e.step(busy(0.0)) is not None
    e.mark_sent(3, until=30.0, command_id="c1", time=0.0)
    e.unsent("c1")
    assert e.step(busy(1.0)) is not None


def test_warm_up_holds_a_shrink_but_not_a_growth() -> None:
    policy, rails = build_policy("threshold", parse_params(["threshold.sustain_s=1", "guard.warmup_s=60"]))
    e = VmEngine(policy, rails)
    assert e.step(idle(100.0, vcpus=8)) is None
    assert e.held is not None and e.held.label == "warmup"
    assert e.step(idle(140.0, vcpus=8)) is None
    assert e.held is not None and "warming up: 40 s of 60 s" in e.held.reason
    assert first_order_after(e, 141.0, 170.0, make=lambda t: idle(t, vcpus=8), step=1.0) == 160.0
    grower = VmEngine(policy, rails)
    grow = grower.step(busy(100.0))
    assert grow is not None and grow.target == 3  # at once, on the first sample


def test_warm_up_is_kept_across_a_hand_over_and_restarts_without_state() -> None:
    policy, rails = build_policy("threshold", parse_params(["threshold.sustain_s=1", "guard.warmup_s=60"]))
    first = VmEngine(policy, rails)
    assert first.step(idle(0.0, vcpus=8)) is None
    taken_over = VmEngine(policy, rails)
    assert taken_over.restore(first.snapshot())
    assert taken_over.step(idle(61.0, vcpus=8)) is not None  # its first-seen time came with the state
    restarted = VmEngine(policy, rails)  # no state: it has no evidence of its own yet
    assert restarted.step(idle(61.0, vcpus=8)) is None and restarted.held is not None
    assert restarted.held.label == "warmup"


def test_a_hold_and_the_budget_survive_a_snapshot() -> None:
    e = refused_once(ErrorCode.RATE_LIMITED, retry_after=50.0, rate_limit_changes=2, rate_limit_window_s=90.0)
    taken_over = VmEngine(e.policy, e.rails)
    assert taken_over.restore(e.snapshot())
    assert taken_over.holds == e.holds and taken_over.holds
    assert (taken_over.guard.actuator_max_changes, taken_over.guard.actuator_window_s) == (2, 90.0)
    assert first_order_after(taken_over, 11.0, 100.0) == 60.0


def test_snapshots_of_an_older_decider_still_decode() -> None:
    class OldGuardState(msgspec.Struct):
        last_up: float = float("-inf")
        last_change: float = float("-inf")

    class OldSnapshot(msgspec.Struct, frozen=True):
        policy: str
        policy_state: msgspec.Raw
        guard: OldGuardState
        last_time: float
        pending_target: int | None
        pending_until: float

    e = engine()
    old = msgspec.msgpack.encode(
        OldSnapshot(
            "threshold",
            msgspec.Raw(msgspec.msgpack.encode(e.policy_state)),
            OldGuardState(5.0, 5.0),
            42.0,
            None,
            float("-inf"),
        )
    )
    restored = engine()
    assert restored.restore(old)
    assert restored.last_time == 42.0 and restored.holds == [] and restored.guard.first_seen is None
    assert isinstance(msgspec.msgpack.decode(restored.snapshot(), type=Snapshot).guard, GuardState)


def test_the_decider_counts_what_it_held() -> None:
    policy, rails = build_policy("threshold", parse_params(["threshold.sustain_s=1", "guard.warmup_s=60"]))
    assert isinstance(rails, GuardRails)
    clock = FixedClock(0.0)
    metrics = DeciderMetrics("decider")
    decider = Decider(StubContext(StubOptions(clock), metrics), policy, rails, DeciderConfig(dry_run=True))  # type: ignore[arg-type]

    def count(reason: str) -> float:
        return metrics.registry.get_sample_value("hotplug_decider_held_total", {"reason": reason}) or 0.0

    assert count("rate-limited") == 0.0 and count("change-budget") == 0.0  # every series is there from the start
    for t in (1.0, 2.0, 3.0):
        clock.t = t
        assert (
            decider.handle_sample(
                MetricSample(
                    time=t,
                    host="h",
                    vm="v",
                    online_vcpus=4,
                    min_vcpus=1,
                    max_vcpus=8,
                    cpu_used_cores=0.0,
                    interval_s=1.0,
                    source="t",
                )
            )
            is None
        )
    assert count("warmup") == 3.0
