"""The one run tally: core-seconds allocated, served, wanted and unmet, and actions, from which every score of
replay, of live deciders (``shadow``, ``decisions``) and of ``hotplug up``'s summary is derived. Pure.

The oracle allocates ``ceil(demand)`` within the VM's bounds in every step: perfect foresight, no cost of change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice, repeat
from operator import lt, ne, sub

from shared.messages import MetricSample
from shared.traces import VmSeries

ORACLE = "oracle"  # the label of the oracle's scores beside the policies'
SCORE_KEYS = (
    "alloc_core_hours",
    "oracle_core_hours",
    "ratio_to_oracle",
    "slack_pct",
    "unmet_pct",
    "underprovisioned_pct",
    "actions_per_vm_day",
)


def oracle_allocations(demand: Iterable[float], low: int, high: int) -> Iterator[int]:
    """What the oracle allocates for each step's ``demand``: the vCPUs it needs, within ``low``..``high``. Written
    for a whole series at a time (a sweep tallies every replay of every VM)."""
    needed = map(math.ceil, map(sub, demand, repeat(1e-9)))
    return (low if n < low else high if n > high else n for n in needed)


def oracle_allocation(demand: float, low: int, high: int) -> int:
    """``oracle_allocations`` for one step's ``demand``."""
    return next(oracle_allocations((demand,), low, high))


@dataclass
class Tally:
    """Sums over steps and VMs from which every score is derived: fed whole series (``add``: replay, and live
    allocations rebuilt per VM) or one live sample at a time (``add_sample``: ``hotplug up``'s summary)."""

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
        """One VM's demand and the vCPUs it had in each step; demand above its size counts as its size."""
        if len(allocations) != len(series.demand):
            raise ValueError(f"{len(allocations)} allocations for {len(series.demand)} steps of {series.name}")
        dt = series.step_s
        low, high = series.min_vcpus, series.max_vcpus
        top = float(high)
        # A whole series at a time (a sweep tallies every policy's replay of every VM): the sums
        # are those of the steps, each step's share as ``add_sample`` counts it.
        demand = [d if d < top else top for d in series.demand]
        served = [d if d < a else a for d, a in zip(demand, allocations, strict=True)]
        self.alloc_core_s += sum(allocations) * dt
        self.oracle_core_s += sum(oracle_allocations(demand, low, high)) * dt
        self.served_core_s += sum(served) * dt
        self.demand_core_s += sum(demand) * dt
        self.unmet_core_s += sum(map(sub, demand, served)) * dt
        self.under_steps += sum(map(lt, allocations, demand))
        self.actions += sum(map(ne, allocations, islice(allocations, 1, None)))
        self.steps += len(allocations)
        self.vm_seconds += len(allocations) * dt

    def add_sample(self, sample: MetricSample) -> None:
        """One live sample as its source measured it: what ran is what was served, its pressure what was unmet.
        Actions are not seen in a sample; a caller that sees the results counts them (``actions``). Nothing is
        clipped to the VM's size, so the sums are exactly what the samples reported."""
        dt = sample.interval_s
        waiting = sample.pressure_cores or 0.0
        demand = sample.cpu_used_cores + waiting
        self.alloc_core_s += sample.online_vcpus * dt
        self.oracle_core_s += (
            oracle_allocation(min(demand, float(sample.max_vcpus)), max(1, sample.min_vcpus), sample.max_vcpus) * dt
        )
        self.served_core_s += sample.cpu_used_cores * dt
        self.demand_core_s += demand * dt
        self.unmet_core_s += waiting * dt
        self.under_steps += waiting > 0
        self.steps += 1
        self.vm_seconds += dt

    def scores(self) -> dict[str, float]:
        """The scores named in ``SCORE_KEYS``; each 0 where its denominator is."""
        return {
            "alloc_core_hours": self.alloc_core_s / 3600,
            "oracle_core_hours": self.oracle_core_s / 3600,
            "ratio_to_oracle": self.alloc_core_s / self.oracle_core_s if self.oracle_core_s else 0.0,
            "slack_pct": 100 * (self.alloc_core_s - self.served_core_s) / self.alloc_core_s if self.alloc_core_s else 0,
            "unmet_pct": 100 * self.unmet_core_s / self.demand_core_s if self.demand_core_s else 0.0,
            "underprovisioned_pct": 100 * self.under_steps / self.steps if self.steps else 0.0,
            "actions_per_vm_day": self.actions / (self.vm_seconds / 86400) if self.vm_seconds else 0.0,
        }
