"""Trace replay: every VM series through a policy, with the same engine the live decider runs. Pure.

A VM starts at its maximum (what was requested). At each step the policy sees only what could run,
``min(demand, vcpus)`` (and, with ``pressure``, the excess), and its decision takes effect from the next
step. The scores (``evaluation.tally``) follow ``docs/deciders.md`` §9, next to a perfect-foresight oracle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from evaluation.tally import Tally, oracle_allocations
from services.decider.engine import VmEngine
from services.decider.guard import GuardRails
from services.decider.policies.base import Observation, PolicyBase
from shared.traces import VmSeries


def replay_series(series: VmSeries, policy: PolicyBase[Any, Any], rails: GuardRails, pressure: bool) -> list[int]:
    """The vCPUs online in each step of ``series`` under ``policy``."""
    engine = VmEngine(policy, rails)
    low, high, step = series.min_vcpus, series.max_vcpus, series.step_s
    vcpus = high
    allocations = []
    for i, wanted in enumerate(series.demand):
        demand = wanted if wanted < high else float(high)
        allocations.append(vcpus)
        used = demand if demand < vcpus else float(vcpus)
        obs = Observation(
            time=i * step,
            vcpus=vcpus,
            min_vcpus=low,
            max_vcpus=high,
            used_cores=used,
            interval_s=step,
            pressure_cores=(demand - used) if pressure else None,
        )
        decision = engine.step(obs)
        if decision is not None:
            engine.mark_sent(decision.target, until=math.inf)
            vcpus = decision.target
    return allocations


def score_policy(
    series: Iterable[VmSeries], policy: PolicyBase[Any, Any], rails: GuardRails, pressure: bool
) -> dict[str, float]:
    tally = Tally()
    for s in series:
        tally.add(s, replay_series(s, policy, rails, pressure))
    return tally.scores()


def score_oracle(series: Iterable[VmSeries]) -> dict[str, float]:
    tally = Tally()
    for s in series:
        clipped = [min(d, s.max_vcpus) for d in s.demand]
        tally.add(s, list(oracle_allocations(clipped, s.min_vcpus, s.max_vcpus)))
    return tally.scores()
