"""How tightly the pool benchmark's jobs could be packed, per sizing rule, printed as JSON.

    .venv/bin/python bench/pool_bound.py --seeds 97,98 --rate 45.68

Each job of ``hotplug bench pool``'s arrivals (the same seeded mix, ``services.simulator.jobs``) is played alone
for its life at full speed (a work job's work, a lifetime job's lifetime, at most ``--hours``), its demand sampled
every second from the simulator's own workload. For each sizing rule the vCPUs a running job holds on average
(every second weighted alike, at least 1 vCPU, at most its request) and the share of its demand left unmet:

* ``requested``: fixed sizes, what the user asked for (today's IaaS);
* ``best fixed at 1 %``: the smallest whole size that, held for the job's whole life, leaves at most 1 % of its
  demand unmet; chosen in hindsight, per job: no live rule that keeps one size can hold less at that harm;
* ``peak of W s``: the highest demand of the last W seconds, rounded up, changed every second (what ``default``
  calls present need with ``need_window_s`` = W, before any hysteresis or limit on changes);
* ``each second``: the demand of that very second rounded up, the floor of any sizing by the second.

A host packs about ``requested ÷ rule`` times the jobs of fixed sizes when cores are what limits it: the ceiling on
what the pool benchmark's overload rate can show for a rule.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import deque

from services.simulator.jobs import arrivals_until, poisson_arrivals
from services.simulator.workloads import Workload

WINDOWS_S = (300, 150, 60)
TARGET_UNMET = 0.01


def demand_of(profile: str, size: float, seed: int, start: float, seconds: int) -> list[float]:
    workload = Workload(profile, size, seed, start)
    return [workload.demand(start + t) for t in range(seconds)]


def trailing_peaks(demand: list[float], window: int) -> list[float]:
    out, queue = [], deque[tuple[int, float]]()
    for t, d in enumerate(demand):
        while queue and queue[-1][1] <= d:
            queue.pop()
        queue.append((t, d))
        while queue[0][0] <= t - window:
            queue.popleft()
        out.append(queue[0][1])
    return out


def best_fixed(demand: list[float], low: int, high: int) -> int:
    total = sum(demand)
    for size in range(low, high + 1):
        if sum(d - size for d in demand if d > size) <= TARGET_UNMET * total:
            return size
    return high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="97,98", help="arrival seeds (default: the calibration seeds 97,98)")
    parser.add_argument("--rate", type=float, default=45.68, help="jobs per hour (default: the overload rate)")
    parser.add_argument("--hours", type=float, default=4.0, help="span of arrivals, and the longest life played")
    args = parser.parse_args()
    span = args.hours * 3600
    held: dict[str, float] = {}
    unmet: dict[str, float] = {}
    seconds = 0
    served = 0.0
    for seed in (int(s) for s in args.seeds.split(",")):
        for job in arrivals_until(poisson_arrivals(args.rate, seed), span):
            life = int(min(span, job.lifetime_s or job.work_s or span))
            demand = demand_of(job.profile, job.size, job.seed, job.arrival_s, life)
            request = job.requested_vcpus
            rules = {
                "requested": [request] * life,
                f"best fixed at {TARGET_UNMET:.0%}": [best_fixed(demand, 1, request)] * life,
                **{f"peak of {w} s": [math.ceil(p - 1e-9) for p in trailing_peaks(demand, w)] for w in WINDOWS_S},
                "each second": [math.ceil(d - 1e-9) for d in demand],
            }
            for rule, sizes in rules.items():
                sizes = [min(request, max(1, s)) for s in sizes]
                held[rule] = held.get(rule, 0.0) + sum(sizes)
                unmet[rule] = unmet.get(rule, 0.0) + sum(d - s for d, s in zip(demand, sizes, strict=True) if d > s)
            seconds += life
            served += sum(demand)
    report = {
        "seeds": args.seeds,
        "rate_per_hour": args.rate,
        "job_seconds": seconds,
        "mean_demand_cores": round(served / seconds, 3),
        "rules": {
            rule: {
                "vcpus_per_job": round(held[rule] / seconds, 3),
                "unmet_pct": round(100 * unmet[rule] / served, 2),
                "packing_vs_requested": round(held["requested"] / held[rule], 3),
            }
            for rule in held
        },
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
