"""The ``default`` policy on its own: fast growth, the stabilisation window, hysteresis at whole vCPUs, memory in
seconds at any cadence, the harm target, censored samples, warm-up and hand-over. Pure; no sockets."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from evaluation.replay import replay_series
from evaluation.tally import Tally
from services.decider.engine import VmEngine
from services.decider.policies.base import Observation
from services.decider.policies.default import (
    PRICE_SCALE,
    DefaultParams,
    DefaultPolicy,
    DefaultState,
    Memory,
    cheapest_size,
)
from services.decider.registry import build_policy, parse_params
from shared.traces import VmSeries


class Loop:
    """A VM driven through the engine as the live decider drives it: orders take effect on the next sample."""

    def __init__(self, *params: str, vcpus: int = 4, high: int = 8) -> None:
        policy, rails = build_policy("default", parse_params(list(params)))
        self.engine = VmEngine(policy, rails)
        self.vcpus, self.high = vcpus, high
        self.changes: list[tuple[float, int, int]] = []
        self.kinds: list[str] = []  # each change's kind, as the decider's metrics label it

    def step(self, t: float, wanted: float, interval: float = 1.0, pressure: bool = True) -> int:
        used = min(wanted, float(self.vcpus))
        decision = self.engine.step(
            Observation(
                time=t,
                vcpus=self.vcpus,
                min_vcpus=1,
                max_vcpus=self.high,
                used_cores=used,
                interval_s=interval,
                pressure_cores=wanted - used if pressure else None,
            )
        )
        if decision is not None:
            self.engine.mark_sent(decision.target, until=t + 3600)
            self.changes.append((t, self.vcpus, decision.target))
            self.kinds.append(decision.kind)
            self.vcpus = decision.target
        return self.vcpus


def test_it_grows_on_the_sample_that_shows_more_demand() -> None:
    loop = Loop("guard.warmup_s=0", vcpus=2)
    for t in range(30):
        loop.step(t, 1.0)
    assert loop.step(30, 5.2) >= 5  # one sample of evidence is enough to grow, and by more than one vCPU
    assert loop.kinds[-1] == "grow"


def test_it_shrinks_only_after_a_quiet_stabilisation_window_at_any_cadence() -> None:
    """The window is seconds: sampled every second or every 20 s, the shrink after a burst comes once
    ``stabilise_s`` of quiet has passed, never before."""
    stabilise = DefaultParams().stabilise_s
    for interval in (1.0, 20.0):
        loop = Loop("guard.warmup_s=0", vcpus=1)
        t = 0.0
        while t < 600:
            loop.step(t, 3.6, interval)
            t += interval
        assert loop.vcpus == 4
        quiet_from = t
        while t < 3000 and loop.vcpus == 4:
            loop.step(t, 0.3, interval)
            t += interval
        shrink_at = loop.changes[-1][0]
        assert loop.vcpus < 4, f"never shrank at {interval} s sampling"
        assert shrink_at >= quiet_from + stabilise - interval, (interval, shrink_at - quiet_from)


def test_noise_around_a_whole_vcpu_does_not_toggle_it() -> None:
    """An hour of demand wobbling around 2.0 cores: it settles at 3 vCPUs and stays, instead of 2↔3."""
    rng = random.Random(7)
    loop = Loop("guard.warmup_s=0", vcpus=2)
    for t in range(3600):
        loop.step(t, 2.0 + rng.uniform(-0.08, 0.08))
    assert loop.vcpus == 3
    assert len(loop.changes) <= 2, loop.changes


def _put_in_charge(loop: Loop, arm: str) -> None:
    """Make ``arm`` the cheapest by far, so the policy hands it the VM on the next sample."""
    policy, state = loop.engine.policy, loop.engine.policy_state
    assert isinstance(policy, DefaultPolicy)
    state.costs = [1e9] * len(state.costs)
    state.costs[policy.arms.index(arm)] = 0.0


def test_a_lower_ordering_arm_put_in_charge_after_a_grow_waits_out_the_window() -> None:
    """The window holds whatever arm is in charge: a generous arm grows the VM, a frugal one takes over on the
    next sample with the same demand, and the VM keeps its size for ``stabilise_s``, then shrinks."""
    stabilise = DefaultParams().stabilise_s
    loop = Loop("guard.warmup_s=0", vcpus=2)
    for t in range(30):
        loop.step(t, 1.0)
    _put_in_charge(loop, "peak of 300 s x3")
    assert loop.step(30, 2.5) == 8  # ceil(2.5 × 3)
    _put_in_charge(loop, "peak of 300 s x1")  # would order ceil(2.5) = 3 at once
    t = 31
    while t < 30 + stabilise:
        assert loop.step(t, 2.5) == 8, f"shrank {t - 30:g} s after the grow, within the {stabilise:g}-s window"
        t += 1
    while t < 30 + 2 * stabilise and loop.vcpus == 8:
        loop.step(t, 2.5)
        t += 1
    assert loop.changes[-1] == (30 + stabilise, 8, 4)  # once the window has passed: at most halved per order
    assert loop.kinds[-2:] == ["grow", "shrink"]


def _arms_at(vcpus: int, demand: Callable[[int], float], seconds: int) -> tuple[DefaultPolicy, DefaultState]:
    """The default policy fed ``demand(t)`` once a second (with pressure) while the VM stays at ``vcpus``."""
    policy = DefaultPolicy(DefaultParams())
    state = policy.new_state()
    for t in range(seconds):
        used = min(demand(t), float(vcpus))
        policy.recommend(
            state,
            Observation(
                time=t,
                vcpus=vcpus,
                min_vcpus=1,
                max_vcpus=8,
                used_cores=used,
                interval_s=1.0,
                pressure_cores=demand(t) - used,
            ),
        )
    return policy, state


def _peak_sizes(policy: DefaultPolicy, state: DefaultState) -> list[int]:
    return [r for arm, r in zip(policy.arms, state.previous, strict=True) if arm.startswith("peak of")]


def _cheapest_sizes(policy: DefaultPolicy, state: DefaultState) -> list[int]:
    return [r for arm, r in zip(policy.arms, state.previous, strict=True) if arm.startswith("cheapest size")]


def test_demand_just_under_a_whole_vcpu_keeps_the_peak_arms_at_their_size() -> None:
    """1.95 cores at 3 vCPUs: a shrink to 2 would leave less than ``hysteresis`` (0.1) of headroom, so no peak
    arm asks for it, and the policy holds 3 with the plainest one in charge. At 1.85 the x1 arms do shrink."""
    policy, state = _arms_at(3, lambda t: 1.95, 600)
    assert min(_peak_sizes(policy, state)) == 3, _peak_sizes(policy, state)
    state.costs = [1e9] * len(state.costs)
    state.costs[policy.arms.index("peak of 300 s x1")] = 0.0
    obs = Observation(time=600, vcpus=3, min_vcpus=1, max_vcpus=8, used_cores=1.95, interval_s=1, pressure_cores=0)
    assert policy.recommend(state, obs).target == 3
    policy, state = _arms_at(3, lambda t: 1.85, 600)
    assert min(_peak_sizes(policy, state)) == 2  # 0.15 of headroom left: enough


def test_demand_of_exactly_two_cores_needs_two_vcpus() -> None:
    policy, state = _arms_at(2, lambda t: 2.0, 60)
    assert min(_peak_sizes(policy, state)) == 2, _peak_sizes(policy, state)


def test_each_arm_is_charged_for_every_vcpu_it_moves() -> None:
    """Autopilot's limit-change term: besides its cores and the unmet demand, an arm pays ``change_cost_s`` per
    vCPU its size moved. Demand 1 -> 2 cores moves the x1 arm by 1 vCPU (2 -> 3) and the x3 arm by 3 (4 -> 7),
    so a change cost of 60 s adds 2 x 60 to what the x3 arm costs more than the x1 arm."""

    def x3_over_x1(change_cost_s: float) -> float:
        params = DefaultParams(windows_s=(0.0,), multipliers=(1.0, 3.0), memories_s=(), change_cost_s=change_cost_s)
        policy = DefaultPolicy(params)
        state = policy.new_state()
        for t, demand in enumerate([1.0, 1.0, 2.0, 2.0]):
            obs = Observation(
                time=t, vcpus=8, min_vcpus=1, max_vcpus=8, used_cores=demand, interval_s=1, pressure_cores=0.0
            )
            policy.recommend(state, obs)
        assert state.previous == [3, 7] and state.before == [3, 7]
        return state.costs[policy.arms.index("peak of 300 s x3")] - state.costs[policy.arms.index("peak of 300 s x1")]

    assert x3_over_x1(60.0) - x3_over_x1(0.0) == pytest.approx(2 * 60.0)


def test_the_cheapest_size_arms_may_be_left_out_but_not_given_a_zero_half_life() -> None:
    policy = DefaultPolicy(DefaultParams(memories_s=()))
    assert policy.arms and all(arm.startswith("peak of") for arm in policy.arms)
    state = policy.new_state()
    obs = Observation(time=0, vcpus=2, min_vcpus=1, max_vcpus=8, used_cores=1.0, interval_s=1, pressure_cores=0.0)
    assert policy.recommend(state, obs).target >= 1
    with pytest.raises(ValueError, match="positive half-lives"):
        DefaultParams(memories_s=(0.0,))


def test_demand_just_under_a_whole_vcpu_keeps_the_cheapest_size_arms_at_their_size() -> None:
    """At 3 vCPUs, demand 1.95 with a spike above 2 every 20 s whose unmet cost eats 0.95 of the vCPU a shrink to
    2 would save: it saves 0.05 < ``hysteresis`` on average, so neither cheapest-size arm shrinks. When the
    spikes eat only 0.8 of it, the shrink saves 0.2 and both take it."""
    price = 1 + PRICE_SCALE / (DefaultParams().target_unmet_pct / 100) ** 2  # 51 at the default 1 %

    def spiky(eaten: float) -> Callable[[int], float]:
        return lambda t: 2 + eaten * 20 / price if t % 20 == 19 else 1.95

    policy, state = _arms_at(3, spiky(0.95), 3600)
    assert _cheapest_sizes(policy, state) == [3, 3]
    policy, state = _arms_at(3, spiky(0.8), 3600)
    assert _cheapest_sizes(policy, state) == [2, 2]


def test_the_cheapest_size_shrinks_only_when_it_saves_the_hysteresis() -> None:
    # Per unit weight, at price 10: size 3 costs 3, size 2 costs 2 + 10 × excess[2], size 1 costs 1 + 6.
    memory = Memory(weight=1.0, excess=[1.5, 0.6, 0.095, 0.0])  # size 2 saves 0.05
    assert cheapest_size(memory, 10.0, 1, 8, 3, hysteresis=0.1) == 3
    assert cheapest_size(memory, 10.0, 1, 8, 3, hysteresis=0.04) == 2
    assert cheapest_size(Memory(weight=1.0, excess=[1.5, 0.6, 0.05, 0.0]), 10.0, 1, 8, 3, 0.1) == 2  # saves 0.5
    # A growth needs no margin: at 2 vCPUs, size 3 is cheaper by only 0.05 and is still taken.
    assert cheapest_size(Memory(weight=1.0, excess=[1.5, 0.6, 0.105, 0.0]), 10.0, 1, 8, 2, 0.1) == 3
    assert cheapest_size(Memory(), 10.0, 1, 8, 5, 0.1) == 5  # no evidence: no change


def _bursty(seed: int, steps: int = 4000) -> VmSeries:
    rng = random.Random(seed)
    demand, level = [], 1.0
    for _ in range(steps):
        if rng.random() < 0.02:
            level = rng.choice([0.5, 1.0, 2.5, 5.0])
        demand.append(max(0.0, level * (1 + rng.gauss(0, 0.15)) + (3.0 if rng.random() < 0.01 else 0.0)))
    return VmSeries(f"bursty-{seed}", demand, 8, 60.0)


def _score(series: list[VmSeries], *params: str) -> dict[str, float]:
    policy, rails = build_policy("default", parse_params(list(params)))
    tally = Tally()
    for s in series:
        tally.add(s, replay_series(s, policy, rails, pressure=True))
    return tally.scores()


def test_a_lower_harm_target_buys_less_unmet_demand_with_more_cores() -> None:
    series = [_bursty(seed) for seed in range(6)]
    scores = [_score(series, f"default.target_unmet_pct={pct}") for pct in (0.25, 1.0, 4.0, 16.0)]
    unmet = [s["unmet_pct"] for s in scores]
    cost = [s["alloc_core_hours"] for s in scores]
    assert unmet == sorted(unmet) and unmet[0] < unmet[-1], unmet
    assert cost == sorted(cost, reverse=True) and cost[0] > cost[-1], cost


def test_a_saturated_sample_without_pressure_makes_it_grow() -> None:
    """Without a pressure signal a VM using all it has wanted at least that much, by an unknown amount."""
    loop = Loop("guard.warmup_s=0", vcpus=2)
    for t in range(20):
        loop.step(t, 1.0, pressure=False)
    assert loop.step(20, 2.0, pressure=False) > 2


def test_a_saturated_sample_without_pressure_is_taken_to_want_a_share_of_the_room_above() -> None:
    """``censored_excess`` (0.25) of the vCPUs between the VM's and its maximum, at least a quarter core."""
    policy = DefaultPolicy(DefaultParams())

    def demand(vcpus: int, used: float, pressure: float | None = None) -> tuple[float, bool]:
        obs = Observation(
            time=0, vcpus=vcpus, min_vcpus=1, max_vcpus=8, used_cores=used, interval_s=1, pressure_cores=pressure
        )
        return policy.demand_of(obs)

    assert demand(2, 2.0) == (2 + 0.25 * 6, True)
    assert demand(8, 8.0) == (8 + 0.25, True)  # no room above: the quarter core
    assert demand(2, 1.5) == (1.5, False)  # not saturated: what ran
    assert demand(2, 2.0, pressure=0.7) == (2.7, False)  # pressure says how much more


def test_feedback_steers_the_price_by_the_unmet_share_the_vm_really_had() -> None:
    """With ``feedback_gain``, a VM held at 1 vCPU whose demand beyond it is 1 % of its demand (the target) keeps
    its price; one starved four times as much is priced up to the limit (x2), one never starved down to it (/2)."""
    policy = DefaultPolicy(DefaultParams(feedback_gain=1.0))
    start = 1 + PRICE_SCALE / 0.01**2

    def price_after(spike: float) -> float:
        """Two hours of demand 1.0 with a spike every 100 s that leaves ``spike`` cores unmet."""
        state = policy.new_state()
        for t in range(7200):
            unmet = spike if t % 100 == 99 else 0.0
            obs = Observation(
                time=t, vcpus=1, min_vcpus=1, max_vcpus=4, used_cores=1.0, interval_s=1, pressure_cores=unmet
            )
            policy.recommend(state, obs)
        assert state.log_price is not None
        return math.exp(state.log_price) / start

    assert 0.9 < price_after(1.0) < 1.1  # 1 core unmet in 101 core-seconds of demand: 0.99 %
    assert price_after(4.0) == pytest.approx(2.0)
    assert price_after(0.0) == pytest.approx(0.5)


def test_warm_up_grows_with_the_price_of_unmet_demand() -> None:
    """A lower harm target holds a new VM longer before its first shrink; the reason says how far along it is."""
    _, rails_1 = build_policy("default")
    _, rails_01 = build_policy("default", parse_params(["default.target_unmet_pct=0.1"]))
    assert 60 <= rails_1.warmup_s <= 300
    assert rails_01.warmup_s > 10 * rails_1.warmup_s
    assert build_policy("default", parse_params(["guard.warmup_s=5"]))[1].warmup_s == 5  # the user's word wins
    loop = Loop(vcpus=8)
    for t in range(int(rails_1.warmup_s) - 1):
        loop.step(t, 0.5)
    assert loop.vcpus == 8 and loop.engine.held is not None and "warming up" in loop.engine.held.reason
    for t in range(int(rails_1.warmup_s), int(rails_1.warmup_s) + 10):
        loop.step(t, 0.5)
    assert loop.vcpus < 8


def test_it_never_grows_back_after_a_shrink_without_new_demand() -> None:
    """A memory that still holds an old burst may become the cheapest after a shorter one shrank the VM;
    growing back on its memory alone would re-plug a vCPU with no new load. Here that switch is forced."""
    loop = Loop("guard.warmup_s=0", "default.stabilise_s=10", vcpus=4)
    for t in range(5):
        loop.step(t, 3.5)
    t = 5
    while loop.vcpus > 1 and t < 4000:
        loop.step(t, 0.05)
        t += 1
    assert loop.vcpus == 1
    policy = loop.engine.policy
    assert isinstance(policy, DefaultPolicy)
    state = loop.engine.policy_state
    generous = policy.arms.index(next(a for a in policy.arms if a.startswith("peak of 86400 s x3")))
    state.costs = [1e9] * len(state.costs)
    state.costs[generous] = 0.0  # the memory that still sees the burst is now the cheapest by far
    for _ in range(5):
        assert loop.step(t, 0.05) == 1, "grew back with no new demand"
        t += 1
    assert loop.step(t, 3.0) > 1  # new demand does bring vCPUs back


def test_its_need_is_the_recent_peak_and_the_rest_of_its_target_is_insurance() -> None:
    """After a burst the VM holds more for a while (stabilisation, longer windows): that is insurance, and its
    need falls to what the last ``stabilise_s`` showed, with the hysteresis of a whole vCPU."""
    policy = DefaultPolicy(DefaultParams())
    state = policy.new_state()

    def rec(t: float, demand: float, vcpus: int = 8) -> tuple[int, int | None]:
        used = min(demand, float(vcpus))
        r = policy.recommend(
            state,
            Observation(
                time=t,
                vcpus=vcpus,
                min_vcpus=1,
                max_vcpus=16,
                used_cores=used,
                interval_s=1.0,
                pressure_cores=demand - used,
            ),
        )
        return r.target, r.need

    for t in range(100):
        rec(t, 6.5)
    assert rec(100, 6.5)[1] == 7
    for t in range(101, 399):
        rec(t, 1.0)
    target, need = rec(399, 1.0)
    assert need == 7  # the burst is 299 s old: still within the window
    target, need = rec(420, 1.0)
    assert need == 2 and target > need  # ceil(1.0 + 0.1): the rest is held against the burst's return
    assert rec(421, 10.0)[1] == 10  # present demand is need at once


def test_a_shorter_need_window_lets_need_fall_sooner_and_never_moves_the_target() -> None:
    """``need_window_s`` only says how long a burst counts as present need (what a full host divides by first):
    with 60 s the need falls a minute after the burst, with the default it waits out ``stabilise_s``; the
    target (what the VM holds when nobody else needs the cores) is the same sample by sample."""
    short, default = DefaultPolicy(DefaultParams(need_window_s=60.0)), DefaultPolicy(DefaultParams())
    states = short.new_state(), default.new_state()

    def both(t: float, demand: float) -> tuple[tuple[int, int | None], tuple[int, int | None]]:
        obs = Observation(time=t, vcpus=8, min_vcpus=1, max_vcpus=16, used_cores=demand, interval_s=1.0)
        a, b = short.recommend(states[0], obs), default.recommend(states[1], obs)
        return (a.target, a.need), (b.target, b.need)

    for t in range(100):
        both(t, 6.5)
    for t in range(100, 170):
        (target_short, need_short), (target_default, need_default) = both(t, 1.0)
        assert target_short == target_default
    assert need_short == 2 and need_default == 7


def test_its_state_survives_a_hand_over() -> None:
    loop = Loop("guard.warmup_s=0", vcpus=4)
    for t in range(400):
        loop.step(t, 1.5 + math.sin(t / 30))
    policy, rails = build_policy("default", parse_params(["guard.warmup_s=0"]))
    other = VmEngine(policy, rails)
    assert other.restore(loop.engine.snapshot())
    assert other.policy_state == loop.engine.policy_state


@pytest.mark.parametrize(
    "bad",
    [
        "default.target_unmet_pct=0",
        "default.target_unmet_pct=60",
        "default.hysteresis=1",
        "default.censored_excess=2",
        "default.stabilise_s=-1",
    ],
)
def test_bad_parameters_are_refused(bad: str) -> None:
    from services.decider.registry import ParamError

    with pytest.raises(ParamError):
        build_policy("default", parse_params([bad]))
