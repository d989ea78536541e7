"""The decider's pure core: the threshold rule, guard rails, the per-VM engine and parameter handling."""

from __future__ import annotations

import random

import pytest

from services.decider.engine import ALLOWED_SIZES_TTL_S, Limit, VmEngine
from services.decider.guard import GuardRails, GuardState, apply_rails
from services.decider.policies.base import OWN_CALM, Observation, Recommendation
from services.decider.policies.threshold import ThresholdParams, ThresholdPolicy
from services.decider.registry import POLICIES, ParamError, build_policy, parse_params


def obs(t: float, vcpus: int, used: float, lo: int = 1, hi: int = 8) -> Observation:
    return Observation(time=t, vcpus=vcpus, min_vcpus=lo, max_vcpus=hi, used_cores=used, interval_s=1.0)


def test_threshold_needs_utilisation_above_for_sustain_seconds_before_adding_one() -> None:
    policy = ThresholdPolicy(ThresholdParams(sustain_s=3))
    state = policy.new_state()
    recs = [policy.recommend(state, obs(t, 2, 1.9)) for t in range(4)]
    assert [r.target for r in recs] == [2, 2, 3, 3]
    assert recs[2].reason == "cpu 95% > 80% for 3 s"


def test_threshold_with_no_sustain_acts_on_the_first_sample_beyond_and_only_then() -> None:
    policy = ThresholdPolicy(ThresholdParams(sustain_s=0))
    state = policy.new_state()
    assert policy.recommend(state, obs(0, 2, 1.0)).target == 2  # 50 %: within the band, no order
    assert policy.recommend(state, obs(1, 2, 1.9)).target == 3


def test_threshold_counts_time_not_samples() -> None:
    """One 300-s trace step covers the 3 s the rule asks for: it acts on it, as it would after 3 samples of 1 s."""
    policy = ThresholdPolicy(ThresholdParams(sustain_s=3))
    step = Observation(time=300, vcpus=2, min_vcpus=1, max_vcpus=8, used_cores=1.9, interval_s=300.0)
    assert policy.recommend(policy.new_state(), step).target == 3


def test_threshold_scales_down_unless_the_load_would_cross_upper_at_once() -> None:
    policy = ThresholdPolicy(ThresholdParams(sustain_s=1, lower=0.5, upper=0.6))
    assert policy.recommend(policy.new_state(), obs(0, 4, 1.0)).target == 3
    # 45 % of 2 vCPUs on 1 vCPU would be 90 % > upper: hold
    assert policy.recommend(policy.new_state(), obs(0, 2, 0.9)).target == 2


def test_guard_rails_clamp_and_cool_down() -> None:
    rails = GuardRails(up_cooldown_s=10, down_cooldown_s=30, max_step_up=2, max_step_down=1, warmup_s=0)
    state = GuardState()
    assert apply_rails(rails, state, obs(0, 2, 2, hi=8), Recommendation(20, "r")).target == 4  # step limit
    assert apply_rails(rails, state, obs(5, 4, 4, hi=8), Recommendation(6, "r")).target == 4  # up cooldown
    assert apply_rails(rails, state, obs(11, 4, 4, hi=8), Recommendation(9, "r")).target == 6
    assert apply_rails(rails, state, obs(20, 6, 0, hi=8), Recommendation(1, "r")).target == 6  # down cooldown
    assert apply_rails(rails, state, obs(41, 6, 0, hi=8), Recommendation(1, "r")).target == 5
    assert apply_rails(rails, GuardState(), obs(0, 3, 0, lo=3), Recommendation(1, "r")).target == 3  # min bound


def test_engine_holds_new_orders_until_the_last_one_took_effect() -> None:
    policy, rails = build_policy("threshold", parse_params(["threshold.sustain_s=1", "guard.up_cooldown_s=0"]))
    engine = VmEngine(policy, rails)
    first = engine.step(obs(1, 2, 2.0))
    assert first is not None and first.target == 3
    engine.mark_sent(3, until=100)
    assert engine.step(obs(2, 2, 2.0)) is None  # still pending
    assert engine.step(obs(1.5, 2, 2.0)) is None  # late sample ignored
    second = engine.step(obs(3, 3, 3.0))  # the sample shows the target: free to act again
    assert second is not None and second.target == 4
    engine.mark_sent(4, until=10)
    assert engine.step(obs(11, 3, 3.0)) is not None  # the pending order expired


def test_engine_keeps_orders_inside_the_sizes_the_actuator_allows_until_they_are_old() -> None:
    policy, rails = build_policy("threshold", parse_params(["threshold.sustain_s=1", "guard.up_cooldown_s=0"]))
    engine = VmEngine(policy, rails)
    engine.learn_allowed(1, 2, now=0.0)  # a refusal said: this actuator allows vm 1..2 vCPUs
    assert engine.step(obs(1, 2, 2.0)) is None  # busy at 2, but 3 would be refused: hold
    taken_over = VmEngine(policy, rails)
    assert taken_over.restore(engine.snapshot())  # a decider that takes the VM over knows it too
    assert taken_over.step(obs(2, 2, 2.0)) is None
    grown = engine.step(obs(ALLOWED_SIZES_TTL_S + 1, 2, 2.0))  # believed no longer: ask again
    assert grown is not None and grown.target == 3
    narrowed_away = VmEngine(policy, rails)
    narrowed_away.learn_allowed(10, 12, now=0.0)  # disagrees with the hypervisor's 1..8: the sample wins
    moved = narrowed_away.step(obs(1, 2, 2.0))
    assert moved is not None and moved.target == 3


def test_unknown_parameters_and_policies_are_refused() -> None:
    with pytest.raises(ParamError, match="unknown policy"):
        build_policy("nope")
    with pytest.raises(ParamError, match="bad parameter"):
        build_policy("threshold", parse_params(["threshold.uper=0.9"]))
    with pytest.raises(ParamError, match="bad parameter"):
        build_policy("threshold", parse_params(["threshold.lower=0.9", "threshold.upper=0.5"]))
    with pytest.raises(ParamError, match=r"NAME\.KEY=VALUE"):
        parse_params(["upper=0.9"])
    policy, rails = build_policy("threshold", parse_params(["threshold.upper=0.9", "guard.down_cooldown_s=5"]))
    assert isinstance(policy, ThresholdPolicy) and policy.params.upper == 0.9
    assert rails.down_cooldown_s == 5 and rails.up_cooldown_s == ThresholdPolicy.default_rails["up_cooldown_s"]


def test_a_policy_holds_its_own_calm_by_default_and_threshold_takes_cooldowns() -> None:
    """The rails' default is the base's (OWN_CALM); only a rule without its own calm sets cooldowns."""
    for name in POLICIES:
        _, rails = build_policy(name)
        if name == "threshold":
            assert (rails.up_cooldown_s, rails.down_cooldown_s) == (10.0, 30.0), name
        else:
            assert (rails.up_cooldown_s, rails.down_cooldown_s) == (0.0, 0.0), name
            assert rails.max_step_down == OWN_CALM["max_step_down"], name


def busy_engine(*extra: str) -> VmEngine:
    policy, rails = build_policy(
        "threshold", parse_params(["threshold.sustain_s=0", "guard.up_cooldown_s=0", "guard.down_cooldown_s=0", *extra])
    )
    return VmEngine(policy, rails)


def test_a_hosts_limit_cuts_a_grow_and_says_why() -> None:
    policy, rails = build_policy("default", parse_params(["guard.warmup_s=0"]))
    starved = Observation(time=1, vcpus=2, min_vcpus=1, max_vcpus=8, used_cores=2.0, interval_s=1.0, pressure_cores=4)
    alone = VmEngine(policy, rails).step(starved)
    assert alone is not None and alone.target == 6
    grown = VmEngine(policy, rails).step(starved, limit=Limit(3, "host full: 3 of 4 wanted vCPUs deferred"))
    assert grown is not None and (grown.target, grown.kind) == (3, "host-full")
    assert grown.reason == f"{alone.reason}; host full: 3 of 4 wanted vCPUs deferred"
    roomy = VmEngine(policy, rails).step(starved, limit=Limit(7, "host full"))
    assert roomy == alone  # a limit above what it wants changes nothing


def test_a_grow_with_no_room_at_all_is_held_as_host_full() -> None:
    engine = busy_engine()
    assert engine.step(obs(1, 2, 2.0), limit=Limit(2, "host full: no room")) is None
    assert engine.held is not None and engine.held.label == "host-full"
    assert engine.step(obs(2, 2, 2.0)) is not None  # no limit: it grows as before


def test_a_reclaim_is_a_shrink_through_the_rails_and_only_a_preemptible_vm_skips_its_warm_up() -> None:
    calm = Observation(time=1, vcpus=6, min_vcpus=1, max_vcpus=8, used_cores=3.0, interval_s=1.0)  # 50 %: hold
    warming = busy_engine("guard.warmup_s=60")
    assert warming.step(calm, limit=Limit(4, "host full: 2 vCPUs go to present need")) is None
    assert warming.held is not None and warming.held.label == "warmup"
    preempted = busy_engine("guard.warmup_s=60", "guard.max_step_down=8")
    taken = preempted.step(calm, limit=Limit(4, "host full: preempted", preempt=True))
    assert taken is not None and (taken.target, taken.kind) == (4, "preempt")
    budgeted = busy_engine("guard.warmup_s=0", "guard.max_changes=1", "guard.max_step_down=8")
    budgeted.mark_sent(6, until=0.5, time=0.5)  # a change half a second ago fills the budget
    assert budgeted.step(calm, limit=Limit(4, "host full")) is None
    assert budgeted.held is not None and budgeted.held.label == "change-budget"
    reclaimed = busy_engine("guard.warmup_s=0")
    one = reclaimed.step(calm, limit=Limit(4, "host full"))
    assert one is not None and (one.target, one.kind) == (5, "reclaim")  # the policy's rails: one vCPU a step


def test_propose_then_decide_is_step() -> None:
    one, two = busy_engine(), busy_engine()
    for t, used in enumerate([2.0, 2.0, 0.1, 1.0, 2.0]):
        proposal = two.propose(obs(t + 1, 2, used))
        assert proposal is not None
        assert one.step(obs(t + 1, 2, used)) == two.decide(proposal)
    assert two.propose(obs(1, 2, 2.0)) is None  # a late observation is ignored


def test_step_without_a_proposal_decides_and_holds_as_propose_then_decide() -> None:
    """step builds no proposal for a sample it has nothing to order on (a speed shortcut): over a warm-up, orders that
    take effect and a limit now and then, it gives what propose then decide give, held reasons included."""
    rng = random.Random(23)
    policy, rails = build_policy("default", parse_params(["guard.warmup_s=900"]))
    one, two = VmEngine(policy, rails), VmEngine(policy, rails)
    vcpus = 4
    for t in range(1, 400):
        seen = obs(t * 60.0, vcpus, min(float(vcpus), rng.choice([0.2, 1.5, 3.0, 7.9])))
        limit = Limit(rng.randint(1, 8), "host full") if rng.random() < 0.1 else None
        proposal = two.propose(seen)
        assert proposal is not None
        decision = one.step(seen, limit=limit)
        assert decision == two.decide(proposal, limit=limit)
        assert one.held == two.held
        if decision is not None:
            for engine in (one, two):
                engine.mark_sent(decision.target, until=t * 60.0 + 120.0)
            vcpus = decision.target if rng.random() < 0.8 else vcpus  # now and then an order that never runs


def test_a_vm_outside_its_range_is_ordered_into_it_when_the_policy_holds_at_its_size() -> None:
    """step's shortcut for a target of the vCPUs the VM has applies only within the VM's range."""
    policy, rails = build_policy("threshold", parse_params(["threshold.sustain_s=1", "guard.warmup_s=0"]))
    below = VmEngine(policy, rails).step(obs(1, 1, 0.5, lo=2))
    assert below is not None and below.target == 2
    above = VmEngine(policy, rails).step(obs(1, 10, 5.0))
    assert above is not None and above.target == 9  # one step down at a time (max_step_down)
    assert VmEngine(policy, rails).step(obs(1, 4, 2.0)) is None  # within: nothing to change
