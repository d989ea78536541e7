"""The decider's pure core: the threshold rule, guard rails, the per-VM engine and parameter handling."""

from __future__ import annotations

import pytest

from services.decider.engine import VmEngine
from services.decider.guard import GuardRails, GuardState, apply_rails
from services.decider.policies.base import Observation, Recommendation
from services.decider.policies.threshold import ThresholdParams, ThresholdPolicy
from services.decider.registry import ParamError, build_policy, parse_params


def obs(t: float, vcpus: int, used: float, lo: int = 1, hi: int = 8) -> Observation:
    return Observation(time=t, vcpus=vcpus, min_vcpus=lo, max_vcpus=hi, used_cores=used, interval_s=1.0)


def test_threshold_needs_k_samples_above_before_adding_one() -> None:
    policy = ThresholdPolicy(ThresholdParams(k=3))
    state = policy.new_state()
    recs = [policy.recommend(state, obs(t, 2, 1.9)) for t in range(4)]
    assert [r.target for r in recs] == [2, 2, 3, 3]
    assert recs[2].reason == "cpu 95% > 80% for 3 samples"


def test_threshold_scales_down_unless_the_load_would_cross_upper_at_once() -> None:
    policy = ThresholdPolicy(ThresholdParams(k=1, lower=0.5, upper=0.6))
    assert policy.recommend(policy.new_state(), obs(0, 4, 1.0)).target == 3
    # 45 % of 2 vCPUs on 1 vCPU would be 90 % > upper: hold
    assert policy.recommend(policy.new_state(), obs(0, 2, 0.9)).target == 2


def test_guard_rails_clamp_and_cool_down() -> None:
    rails = GuardRails(up_cooldown_s=10, down_cooldown_s=30, max_step_up=2, max_step_down=1)
    state = GuardState()
    assert apply_rails(rails, state, obs(0, 2, 2, hi=8), Recommendation(20, "r")).target == 4  # step limit
    assert apply_rails(rails, state, obs(5, 4, 4, hi=8), Recommendation(6, "r")).target == 4  # up cooldown
    assert apply_rails(rails, state, obs(11, 4, 4, hi=8), Recommendation(9, "r")).target == 6
    assert apply_rails(rails, state, obs(20, 6, 0, hi=8), Recommendation(1, "r")).target == 6  # down cooldown
    assert apply_rails(rails, state, obs(41, 6, 0, hi=8), Recommendation(1, "r")).target == 5
    assert apply_rails(rails, GuardState(), obs(0, 3, 0, lo=3), Recommendation(1, "r")).target == 3  # min bound


def test_engine_holds_new_orders_until_the_last_one_took_effect() -> None:
    policy, rails = build_policy("threshold", parse_params(["threshold.k=1", "guard.up_cooldown_s=0"]))
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


def test_default_never_grows_back_after_a_shrink_without_new_demand() -> None:
    """A longer window's arm can still remember an old spike after a shorter one shrank the VM; growing
    back on that memory alone would unplug and replug a vCPU with no change in load."""
    policy, rails = build_policy("default")
    engine = VmEngine(policy, rails)
    vcpus, moves = 2, []
    demand = [2.0] * 3 + [0.05] * 40  # a burst, then idle for good
    for t, d in enumerate(demand):
        decision = engine.step(obs(t, vcpus, min(d, vcpus), hi=2))
        if decision is not None:
            engine.mark_sent(decision.target, until=t + 100)
            moves.append((t, vcpus, decision.target))
            vcpus = decision.target
    assert moves, "the idle VM should shrink"
    assert all(after < before for _, before, after in moves), moves  # never back up
    # new demand (the VM saturated) does bring the vCPU back, within a few samples
    grown = [engine.step(obs(len(demand) + k, vcpus, 1.0, hi=2)) for k in range(5)]
    assert any(g is not None and g.target == 2 for g in grown)
