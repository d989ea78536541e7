"""Trace replay: every VM series through a policy, with the same engine the live decider runs. Pure.

A VM starts at its maximum (what was requested). At each step the policy sees only what could run,
``min(demand, vcpus)`` (and, with ``pressure``, the excess), and its decision takes effect from the next
step. The scores (``evaluation.tally``) follow ``docs/deciders.md`` §9, next to a perfect-foresight oracle.

With a fleet harm steer (``services.decider.harm``), the VMs of a replay are one fleet, replayed period by period
of the steer: at the start of each period the steer folds in what every VM showed before it, as the live
decider's does, and every VM's samples of the period then carry that price factor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from evaluation.tally import Tally, oracle_allocations
from services.decider.engine import VmEngine
from services.decider.guard import GuardRails
from services.decider.policies.base import Observation, PolicyBase
from shared.traces import VmSeries


class _Replayed:
    """One VM of a fleet replay: its engine, the vCPUs it has, those it had at each step, and its next step."""

    __slots__ = ("allocations", "engine", "next_step", "series", "vcpus")

    def __init__(self, series: VmSeries, policy: PolicyBase[Any, Any], rails: GuardRails) -> None:
        self.series = series
        self.engine = VmEngine(policy, rails)
        self.vcpus = series.max_vcpus
        self.allocations: list[int] = []
        self.next_step = 0

    def has_step_before(self, stop: float) -> bool:
        return self.next_step < len(self.series.demand) and self.next_step * self.series.step_s < stop

    def steps_before(self, stop: float) -> range:
        """The steps not yet replayed whose time (step × step_s) is before ``stop``; they count as replayed."""
        n, step, first = len(self.series.demand), self.series.step_s, self.next_step
        last = max(first, min(n, math.ceil(stop / step)))
        while last > first and (last - 1) * step >= stop:  # the division's rounding, either way
            last -= 1
        while last < n and last * step < stop:
            last += 1
        self.next_step = last
        return range(first, last)


def _observation(series: VmSeries, i: int, vcpus: int, pressure: bool, factor: float) -> Observation:
    """What the policy sees of step ``i`` of ``series`` at ``vcpus``: only what could run, and the excess with
    ``pressure``."""
    high = series.max_vcpus
    wanted = series.demand[i]
    demand = wanted if wanted < high else float(high)
    used = demand if demand < vcpus else float(vcpus)
    return Observation(
        time=i * series.step_s,
        vcpus=vcpus,
        min_vcpus=series.min_vcpus,
        max_vcpus=high,
        used_cores=used,
        interval_s=series.step_s,
        pressure_cores=(demand - used) if pressure else None,
        price_factor=factor,
    )


def replay_series(series: VmSeries, policy: PolicyBase[Any, Any], rails: GuardRails, pressure: bool) -> list[int]:
    """The vCPUs online in each step of ``series`` under ``policy``: a fleet of one VM."""
    return replay_fleet([series], policy, rails, pressure)[0]


def _replay_alone(series: VmSeries, policy: PolicyBase[Any, Any], rails: GuardRails, pressure: bool) -> list[int]:
    """``replay_series`` for a policy whose price no fleet steer moves."""
    engine = VmEngine(policy, rails)
    vcpus = series.max_vcpus
    allocations = []
    for i in range(len(series.demand)):
        allocations.append(vcpus)
        decision = engine.step(_observation(series, i, vcpus, pressure, 1.0))
        if decision is not None:
            engine.mark_sent(decision.target, until=math.inf)
            vcpus = decision.target
    return allocations


def replay_fleet(
    series: Sequence[VmSeries], policy: PolicyBase[Any, Any], rails: GuardRails, pressure: bool
) -> list[list[int]]:
    """The vCPUs online in each step of each of ``series``, replayed as one fleet under ``policy``."""
    steer = policy.harm_steer()
    if steer is None:  # nothing shared: each VM alone gives the same
        return [_replay_alone(s, policy, rails, pressure) for s in series]
    fleet = [_Replayed(s, policy, rails) for s in series]
    period = steer.settings.period_s
    end = max((len(s.demand) * s.step_s for s in series), default=0.0)
    start = 0.0
    while start < end:
        stop = start + period
        # A period without samples is skipped, as the live decider, which sees none, never counts it.
        if any(vm.has_step_before(stop) for vm in fleet):
            factor = steer.advance(start)  # the whole fleet's past before this period, as the decider's
            for vm in fleet:
                engine, s, vcpus, allocations = vm.engine, vm.series, vm.vcpus, vm.allocations
                # _observation written out, with the series read once per period rather than once per step: this loop
                # runs for every step of every VM (test_replay pins it to _observation).
                wanted, step_s, low, high = s.demand, s.step_s, s.min_vcpus, s.max_vcpus
                top = float(high)
                for i in vm.steps_before(stop):
                    allocations.append(vcpus)
                    demand = wanted[i]
                    if not demand < high:
                        demand = top
                    used = demand if demand < vcpus else float(vcpus)
                    obs = Observation(
                        time=i * step_s,
                        vcpus=vcpus,
                        min_vcpus=low,
                        max_vcpus=high,
                        used_cores=used,
                        interval_s=step_s,
                        pressure_cores=(demand - used) if pressure else None,
                        price_factor=factor,
                    )
                    steer.observe(obs)
                    decision = engine.step(obs)
                    if decision is not None:
                        engine.mark_sent(decision.target, until=math.inf)
                        vcpus = decision.target
                vm.vcpus = vcpus
        start = stop
    return [vm.allocations for vm in fleet]


def score_policy(
    series: Iterable[VmSeries], policy: PolicyBase[Any, Any], rails: GuardRails, pressure: bool
) -> dict[str, float]:
    fleet = list(series)
    tally = Tally()
    for s, allocations in zip(fleet, replay_fleet(fleet, policy, rails, pressure), strict=True):
        tally.add(s, allocations)
    return tally.scores()


def score_oracle(series: Iterable[VmSeries]) -> dict[str, float]:
    tally = Tally()
    for s in series:
        clipped = [min(d, s.max_vcpus) for d in s.demand]
        tally.add(s, list(oracle_allocations(clipped, s.min_vcpus, s.max_vcpus)))
    return tally.scores()
