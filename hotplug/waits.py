"""Scoring how long a run's jobs waited to start, and how much they were slowed, from the simulator's job records
(``shared.sim_api.SimJob``): pure. Used by the summary of ``hotplug up``, for the live run and for the same
arrivals with fixed sizes (``services.simulator.host.fixed_sizes``).

* **Wait**: start − arrival. A job still waiting when the run ends counts with what it has waited so far (a lower
  bound), so a queue that never drains is not hidden by leaving its jobs out. Rejected jobs (larger than the
  host's whole capacity) never wait and are counted apart.
* **Slowdown**: a finished work job's run time over its work (1: it always had the CPU it wanted).
* **OOM kills**: times a guest's OOM killer took a job (its memory shrunk below what it asks); shown when any.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from evaluation.bench.common import percentile
from shared.sim_api import SimJob


@dataclass(frozen=True)
class JobWaits:
    arrived: int
    started: int
    finished: int
    waiting: int
    rejected: int
    wait_p50_s: float
    wait_p95_s: float
    wait_mean_s: float
    slowdown_p50: float  # nan when no work job finished
    slowdown_max: float
    oom_kills: int = 0

    def line(self) -> str:
        slowdown = (
            f"; slowdown of finished work p50 {self.slowdown_p50:.2f}, max {self.slowdown_max:.2f}"
            if not math.isnan(self.slowdown_p50)
            else ""
        )
        rejected = f", {self.rejected} rejected (larger than the host)" if self.rejected else ""
        killed = f"; {self.oom_kills} OOM kill{'s' if self.oom_kills != 1 else ''}" if self.oom_kills else ""
        return (
            f"{self.arrived} arrived, {self.started} started, {self.finished} finished, {self.waiting} waiting"
            f"{rejected}; wait p50 {self.wait_p50_s:.0f} s, p95 {self.wait_p95_s:.0f} s, "
            f"mean {self.wait_mean_s:.0f} s{slowdown}{killed}"
        )


def job_waits(jobs: Sequence[SimJob], end_s: float) -> JobWaits:
    """The waits of ``jobs`` (times from the run's start) in a run that ended at ``end_s``."""
    admitted = [j for j in jobs if not j.rejected]
    waits = [(j.start_s if j.start_s is not None else max(end_s, j.arrival_s)) - j.arrival_s for j in admitted]
    slowdowns = [s for j in admitted if (s := j.slowdown) is not None]
    return JobWaits(
        arrived=len(jobs),
        started=sum(1 for j in admitted if j.start_s is not None),
        finished=sum(1 for j in admitted if j.end_s is not None),
        waiting=sum(1 for j in admitted if j.start_s is None),
        rejected=len(jobs) - len(admitted),
        wait_p50_s=percentile(waits, 0.5) if waits else 0.0,
        wait_p95_s=percentile(waits, 0.95) if waits else 0.0,
        wait_mean_s=sum(waits) / len(waits) if waits else 0.0,
        slowdown_p50=percentile(slowdowns, 0.5),
        slowdown_max=max(slowdowns, default=float("nan")),
        oom_kills=sum(j.oom_kills for j in jobs),
    )
