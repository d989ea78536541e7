"""Trace replay: every VM series through a policy, with the same engine the live decider runs. Pure.

A VM starts at its maximum (what was requested). At each step the policy sees only what could run,
``min(demand, vcpus)`` (and, with ``pressure``, the excess), and its decision takes effect from the next
step. The scores follow ``docs/deciders.md`` §9, next to a perfect-foresight oracle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.decider.engine import VmEngine
from services.decider.guard import GuardRails
from services.decider.policies.base import Observation, PolicyBase
from services.decider.traces import VmSeries

ORACLE = "oracle"
SCORE_KEYS = (
    "alloc_core_hours",
    "oracle_core_hours",
    "ratio_to_oracle",
    "slack_pct",
    "unmet_pct",
    "underprovisioned_pct",
    "actions_per_vm_day",
)


def oracle_allocation(demand: float, low: int, high: int) -> int:
    return max(low, min(high, math.ceil(demand - 1e-9)))


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


@dataclass
class Tally:
    """Sums over steps and VMs from which every score is derived."""

    steps: int = 0
    vm_seconds: float = 0.0
    alloc_core_s: float = 0.0
    oracle_core_s: float = 0.0
    served_core_s: float = 0.0
    demand_core_s: float = 0.0
    unmet_core_s: float = 0.0
    under_steps: int = 0
    actions: int = 0

    def add(self, series: VmSeries, allocations: list[int]) -> None:
        dt = series.step_s
        low, high = series.min_vcpus, series.max_vcpus
        previous = None
        for wanted, a in zip(series.demand, allocations, strict=True):
            d = min(wanted, float(high))
            served = min(d, float(a))
            self.alloc_core_s += a * dt
            self.oracle_core_s += oracle_allocation(d, low, high) * dt
            self.served_core_s += served * dt
            self.demand_core_s += d * dt
            self.unmet_core_s += (d - served) * dt
            self.under_steps += d > a
            if previous is not None and a != previous:
                self.actions += 1
            previous = a
        self.steps += len(allocations)
        self.vm_seconds += len(allocations) * dt

    def scores(self) -> dict[str, float]:
        return {
            "alloc_core_hours": self.alloc_core_s / 3600,
            "oracle_core_hours": self.oracle_core_s / 3600,
            "ratio_to_oracle": self.alloc_core_s / self.oracle_core_s if self.oracle_core_s else 0.0,
            "slack_pct": 100 * (self.alloc_core_s - self.served_core_s) / self.alloc_core_s if self.alloc_core_s else 0,
            "unmet_pct": 100 * self.unmet_core_s / self.demand_core_s if self.demand_core_s else 0.0,
            "underprovisioned_pct": 100 * self.under_steps / self.steps if self.steps else 0.0,
            "actions_per_vm_day": self.actions / (self.vm_seconds / 86400) if self.vm_seconds else 0.0,
        }


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
        tally.add(s, [oracle_allocation(min(d, s.max_vcpus), s.min_vcpus, s.max_vcpus) for d in s.demand])
    return tally.scores()
