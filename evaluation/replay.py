"""Trace replay: every VM series through a policy, with the same engine the live decider runs. Pure.

A VM starts at its maximum (what was requested). At each step the policy sees only what could run,
``min(demand, vcpus)`` (and, with ``pressure``, the excess), and its decision takes effect from the next
step. The scores (``evaluation.tally``) follow ``docs/deciders.md`` §9, next to a perfect-foresight oracle.

With a fleet harm steer (``services.decider.harm``), the VMs of a replay are one fleet, replayed in lock-step as
a decider sees them: at each time the steer folds in what every VM showed before it, as the live decider's does,
and every VM's sample then carries that price factor, which so never depends on the order of VMs within a step.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from evaluation.tally import Tally, oracle_allocations
from services.decider.engine import VmEngine
from services.decider.guard import GuardRails
from services.decider.policies.base import Observation, PolicyBase
from shared.traces import VmSeries


class _Replayed:
    """One VM of a fleet replay: its engine, the vCPUs it has and those it had at each step."""

    __slots__ = ("allocations", "engine", "series", "vcpus")

    def __init__(self, series: VmSeries, policy: PolicyBase[Any, Any], rails: GuardRails) -> None:
        self.series = series
        self.engine = VmEngine(policy, rails)
        self.vcpus = series.max_vcpus
        self.allocations: list[int] = []


def _timeline(k: int, series: VmSeries) -> Iterator[tuple[float, int, int]]:
    step = series.step_s
    return ((i * step, k, i) for i in range(len(series.demand)))


def _steps(fleet: Sequence[_Replayed]) -> Iterator[tuple[float, list[tuple[int, int]]]]:
    """The fleet's sample times in order, each with the (VM, step) pairs sampled then."""
    lengths = [len(r.series.demand) for r in fleet]
    if len({r.series.step_s for r in fleet}) == 1:  # the usual trace: one step for all, so step i is one time
        step = fleet[0].series.step_s
        for i in range(max(lengths)):
            yield i * step, [(k, i) for k, n in enumerate(lengths) if i < n]
        return
    timelines = [_timeline(k, r.series) for k, r in enumerate(fleet)]
    for t, group in itertools.groupby(heapq.merge(*timelines), key=lambda e: e[0]):
        yield t, [(k, i) for _, k, i in group]


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
    if steer is None:  # nothing shared: each VM alone gives the same, without merging the timelines
        return [_replay_alone(s, policy, rails, pressure) for s in series]
    fleet = [_Replayed(s, policy, rails) for s in series]
    for t, sampled in _steps(fleet):
        factor = steer.advance(t)  # what the fleet showed before t; as the live decider folds it
        for k, i in sampled:
            vm = fleet[k]
            vm.allocations.append(vm.vcpus)
            obs = _observation(vm.series, i, vm.vcpus, pressure, factor)
            steer.observe(obs)
            decision = vm.engine.step(obs)
            if decision is not None:
                vm.engine.mark_sent(decision.target, until=math.inf)
                vm.vcpus = decision.target
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
