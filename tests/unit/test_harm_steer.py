"""The fleet's harm steer (``services.decider.harm``): its factor rises while the fleet leaves more demand unmet
than the target and falls while it leaves less, waits for a full window, stays in its range, and counts nothing
unmet at a VM's largest size; replay runs a steered fleet in lock-step, the same whatever the VMs' order, and the
live decider prices each sample exactly as replay does."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest

from evaluation.replay import replay_fleet, replay_series
from services.decider.guard import GuardRails
from services.decider.harm import HarmSteer, SteerSettings, SteerState
from services.decider.policies.base import Observation
from services.decider.policies.default import STEER_RANGE, DefaultParams, DefaultPolicy
from services.decider.registry import build_policy
from services.decider.rulebook import RuleBook
from services.decider.service import Decider, DeciderConfig, DeciderMetrics
from shared.messages import MetricSample
from shared.traces import VmSeries
from tests.stubs import FixedClock, RecordingJetStream, StubContext, StubOptions

SETTINGS = SteerSettings(gain=1.0, half_life_s=3600.0, settle_s=3600.0, max_error=2.0, range=4.0, period_s=60.0)


def _obs(t: float, vcpus: int, used: float, pressure: float | None, high: int = 8) -> Observation:
    return Observation(
        time=t, vcpus=vcpus, min_vcpus=1, max_vcpus=high, used_cores=used, interval_s=60.0, pressure_cores=pressure
    )


def _feed(steer: HarmSteer, unmet_share: float, hours: float, high: int = 8) -> HarmSteer:
    """One VM a minute for ``hours``, running 2 cores, with pressure such that ``unmet_share`` of its demand
    could not run."""
    t = steer._last + 60.0 if steer._last is not None else 0.0
    end = t + hours * 3600
    while t <= end:
        steer.advance(t)
        steer.observe(_obs(t, 2, 2.0, 2 * unmet_share / (1 - unmet_share), high))
        t += 60.0
    return steer


def _steer(unmet_share: float, hours: float, high: int = 8, settings: SteerSettings = SETTINGS) -> HarmSteer:
    """A steer for a 1 % target fed ``_feed``."""
    return _feed(HarmSteer(0.01, settings, DefaultPolicy(DefaultParams()).demand_of), unmet_share, hours, high)


def test_the_factor_follows_the_realised_share_against_the_target() -> None:
    assert _steer(0.04, 3).factor > 1.5  # 4 % left unmet against 1 %: unmet demand is priced up
    assert _steer(0.0025, 3).factor < 1 / 1.5  # a quarter of the target: priced down
    assert _steer(0.01, 3).factor == pytest.approx(1.0, abs=0.02)  # on target: it stays
    assert _steer(0.04, 3).realised_share == pytest.approx(0.04)


def test_a_short_history_counts_little_and_the_factor_stays_in_its_range() -> None:
    assert 1.0 < _steer(0.5, 0.1).factor < 1.25 < _steer(0.5, 3).factor  # 6 minutes against 3 hours
    assert _steer(0.5, 48).factor == pytest.approx(SETTINGS.range)
    assert _steer(0.0, 48).factor == pytest.approx(1 / SETTINGS.range)
    off = msgspec.structs.replace(SETTINGS, gain=0.0)
    assert _steer(0.5, 48, settings=off).factor == 1.0


def test_a_fleet_back_on_target_is_priced_by_the_law_again() -> None:
    """Proportional, not integral: hours off target leave nothing behind once the window is back on it (an
    integrator would keep the price it wound up to)."""
    steer = _feed(_steer(0.08, 6), 0.01, 12)
    assert steer.factor == pytest.approx(1.0, abs=0.02)


def test_the_factor_is_set_at_the_start_of_each_period_from_the_periods_before() -> None:
    """Samples within a period all get the factor set at its start; a sample counts from the next period on."""
    steer = HarmSteer(0.01, msgspec.structs.replace(SETTINGS, period_s=600.0), DefaultPolicy(DefaultParams()).demand_of)
    factors = []
    for t in range(0, 3000, 60):
        factors.append(steer.advance(float(t)))
        steer.observe(_obs(float(t), 2, 2.0, 1.0))  # a third of the demand unmet
    assert factors[:10] == [1.0] * 10  # the first period: nothing before it
    assert len(set(factors[10:20])) == 1 and factors[10] > 1.0  # set at 600 s, held to 1200 s
    assert factors[20] > factors[19]  # a longer history counts more


def test_demand_beyond_the_largest_size_is_not_counted_unmet() -> None:
    """A VM at its largest size that wants more leaves nothing a decision could meet: no unmet share."""
    steer = _steer(0.5, 3, high=2)
    assert steer.realised_share == 0.0
    assert steer.factor < 1.0


def test_a_saturated_sample_without_pressure_counts_the_policys_guess() -> None:
    steer = HarmSteer(0.01, SETTINGS, DefaultPolicy(DefaultParams()).demand_of)
    steer.advance(0.0)
    steer.observe(_obs(0.0, 2, 2.0, None))  # saturated: the policy takes it to want 1.5 cores more (a quarter of 6)
    steer.advance(60.0)
    assert steer.realised_share == pytest.approx(1.5 / 3.5)


def _fleet(n: int) -> list[VmSeries]:
    rng = random.Random(7)
    return [
        VmSeries(f"vm{k}", [rng.choice((0.2, 0.5, 1.5, 3.9)) * rng.random() * 2 for _ in range(200)], 4, 300.0)
        for k in range(n)
    ]


def test_a_steered_fleet_replays_the_same_whatever_the_order_of_its_vms() -> None:
    policy, rails = build_policy("default", {"default": {"steer_gain": "2", "steer_half_life_s": "1800"}})
    fleet = _fleet(6)
    forward = replay_fleet(fleet, policy, rails, pressure=False)
    policy2, rails2 = build_policy("default", {"default": {"steer_gain": "2", "steer_half_life_s": "1800"}})
    backward = replay_fleet(fleet[::-1], policy2, rails2, pressure=False)
    assert forward == backward[::-1]
    unsteered = [replay_series(s, *build_policy("default", {"default": {"steer_gain": "0"}}), False) for s in fleet]
    assert forward != unsteered  # the steer moved the price, and with it some decision


def test_the_steer_is_on_by_default_and_its_range_is_what_the_docs_say() -> None:
    assert DefaultPolicy(DefaultParams(steer_gain=0)).harm_steer() is None
    steer = DefaultPolicy(DefaultParams()).harm_steer()
    assert steer is not None and steer.settings.range == STEER_RANGE == 25.0


def test_the_price_factor_scales_the_premium_of_an_unmet_core() -> None:
    """A VM whose 4-core bursts are rare enough to leave to the law at 1 % holds them at 25× the premium."""
    policy = DefaultPolicy(DefaultParams())

    def size_after(factor: float) -> int:
        state = policy.new_state()
        size = 4
        for i in range(2000):
            demand = 3.9 if i % 97 == 0 else 0.4
            obs = Observation(
                time=i * 60.0,
                vcpus=size,
                min_vcpus=1,
                max_vcpus=4,
                used_cores=min(demand, size),
                interval_s=60.0,
                pressure_cores=max(0.0, demand - size),
                price_factor=factor,
            )
            size = policy.recommend(state, obs).target
        return size

    assert size_after(25.0) > size_after(1.0)


def _steered_default() -> tuple[DefaultPolicy, GuardRails]:
    """``default`` with a quick steer, its factor set at every 300-s step (so that any sample counted in the wrong
    period moves a price)."""
    policy, rails = build_policy("default", {"default": {"steer_gain": "2", "steer_half_life_s": "1800"}})
    assert isinstance(policy, DefaultPolicy)
    made = policy.harm_steer()
    assert made is not None
    settings = msgspec.structs.replace(made.settings, period_s=300.0, settle_s=600.0)
    policy.harm_steer = lambda: HarmSteer(made.target, settings, policy.demand_of)  # type: ignore[method-assign]
    return policy, rails


def test_the_live_decider_prices_each_sample_as_replay_does() -> None:
    """Several VMs sampled at each step through the real ``Decider.handle_sample`` end with the allocations
    that a replay of the same fleet gives."""
    fleet = _fleet(4)

    async def live() -> list[list[int]]:
        clock = FixedClock()
        ctx = StubContext(StubOptions(clock), DeciderMetrics("decider"), RecordingJetStream())
        policy, rails = _steered_default()
        decider = Decider(ctx, policy, rails, DeciderConfig(command_ttl_s=1e12))  # type: ignore[arg-type]
        vcpus = {s.name: s.max_vcpus for s in fleet}
        allocations: dict[str, list[int]] = {s.name: [] for s in fleet}
        for i in range(200):
            clock.t = i * 300.0
            for s in fleet:
                allocations[s.name].append(vcpus[s.name])
                demand = min(s.demand[i], float(s.max_vcpus))
                sample = MetricSample(
                    time=clock.t,
                    host="h",
                    vm=s.name,
                    online_vcpus=vcpus[s.name],
                    min_vcpus=s.min_vcpus,
                    max_vcpus=s.max_vcpus,
                    cpu_used_cores=min(demand, float(vcpus[s.name])),
                    interval_s=s.step_s,
                    source="trace",
                )
                command = decider.handle_sample(sample)  # the command itself: nothing to wait for
                if command is not None:
                    vcpus[s.name] = command.vcpu_change()[1]
        # The steer is exported: its factor as the decider prices by it, and the share it steers by.
        steer = next(iter(decider.steers.values()))
        assert steer is not None and steer.factor != 1.0
        labels = {"policy": "default", "target_unmet_pct": "1"}
        registry = ctx.metrics.registry
        assert registry.get_sample_value("hotplug_decider_price_factor", labels) == steer.factor
        assert registry.get_sample_value("hotplug_decider_realised_unmet_ratio", labels) == steer.realised_share
        return [allocations[s.name] for s in fleet]

    assert asyncio.run(live()) == replay_fleet(fleet, *_steered_default(), pressure=False)


def test_a_steer_resumed_from_its_snapshot_carries_on_as_if_never_stopped() -> None:
    """Stopped at any sample, stored (msgpack, as the decider keeps it) and resumed by a new steer, the steer sets
    every later factor to the same bits as one that ran through."""
    rng = random.Random(7)
    demand_of = DefaultPolicy(DefaultParams()).demand_of
    samples = [_obs(t * 60.0, 2, 2.0, rng.choice([0.0, 0.0, 0.0, 0.05, 0.3]), high=8) for t in range(0, 6 * 60, 7)]

    def run(steer: HarmSteer, part: list[Observation]) -> list[float]:
        factors = []
        for obs in part:
            factors.append(steer.advance(obs.time))
            steer.observe(obs)
        return factors

    through = run(HarmSteer(0.01, SETTINGS, demand_of), samples)
    assert len(set(through)) > 5  # the factor moved: the comparison below can tell a fresh steer apart
    for stop in (1, len(samples) // 3, len(samples) // 2 + 1, len(samples) - 1):
        first = HarmSteer(0.01, SETTINGS, demand_of)
        before = run(first, samples[:stop])
        stored = msgspec.msgpack.decode(msgspec.msgpack.encode(first.snapshot()), type=SteerState)
        second = HarmSteer(0.01, SETTINGS, demand_of)
        assert second.resume(stored, samples[stop].time)
        assert before + run(second, samples[stop:]) == through


def test_a_snapshot_of_another_target_or_other_settings_is_refused() -> None:
    steer = _steer(0.04, 3)
    state = steer.snapshot()
    demand_of = DefaultPolicy(DefaultParams()).demand_of
    other_target = HarmSteer(0.02, SETTINGS, demand_of)
    other_settings = HarmSteer(0.01, msgspec.structs.replace(SETTINGS, gain=2.0), demand_of)
    for fresh in (other_target, other_settings):
        assert not fresh.resume(state, 3 * 3600.0)
        assert fresh.factor == 1.0 and fresh.period is None  # nothing taken
    same = HarmSteer(0.01, SETTINGS, demand_of)
    assert same.resume(state, 3 * 3600.0) and same.factor == steer.factor > 1.5


def test_a_steer_resumed_on_a_clock_gone_back_carries_on_from_the_new_time() -> None:
    """Resumed for a sample before the period it last counted (a simulator or host clock started again), the steer
    takes its periods to the new time: its next period is set as the one after its last would have been, instead
    of its factor staying frozen until the clock passes where it was."""
    ran = _steer(0.04, 3)
    assert ran.period is not None
    restarted = HarmSteer(0.01, SETTINGS, ran._demand_of)
    assert restarted.resume(ran.snapshot(), 0.0)
    assert restarted.period == 0.0 and restarted.factor == ran.factor
    again = _obs(SETTINGS.period_s / 2, 2, 2.0, 0.0)
    ran.observe(again)
    restarted.observe(again)
    later = ran.advance(ran.period + SETTINGS.period_s)
    assert restarted.advance(SETTINGS.period_s) == later != 1.0


async def test_a_rule_reload_carries_the_steer_of_the_same_policy_and_target_on() -> None:
    """``Decider.use_rules`` makes new policies; the one of the same policy and target resumes the steer the old
    one had (services/decider/steer_store.py), and one of another target starts from the law."""
    clock = FixedClock()
    ctx = StubContext(StubOptions(clock), DeciderMetrics("decider"), RecordingJetStream())
    policy, rails = build_policy("default", {})
    decider = Decider(ctx, policy, rails, DeciderConfig(command_ttl_s=1e12))  # type: ignore[arg-type]

    def saturated(t: float) -> None:
        clock.t = t
        decider.handle_sample(
            MetricSample(
                time=t,
                host="h",
                vm="vm",
                online_vcpus=2,
                min_vcpus=1,
                max_vcpus=8,
                cpu_used_cores=2.0,
                interval_s=600.0,
                source="test",
            )
        )

    for k in range(6 * 6):  # six hours saturated, a sample each 10 minutes: far more unmet than 1 %
        saturated(k * 600.0)
    factor = decider.steers[policy].factor  # type: ignore[union-attr]
    assert factor > 1.5

    same, _ = build_policy("default", {})
    decider.use_rules(RuleBook.single(same, rails))
    saturated(36 * 600.0 - 1)  # within the last period: the factor it was set to
    assert decider.steers[same].factor == factor  # type: ignore[union-attr]

    tighter, _ = build_policy("default", {"default": {"target_unmet_pct": "0.5"}})
    decider.use_rules(RuleBook.single(tighter, rails))
    saturated(36 * 600.0 - 1)
    assert decider.steers[tighter].factor == 1.0  # type: ignore[union-attr]
