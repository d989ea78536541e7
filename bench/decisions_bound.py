"""What a decider that knew the future could reach on the simulator's workloads, printed as JSON.

    .venv/bin/python bench/decisions_bound.py --seeds 11,12 --vms 8 --duration 3600

Each VM's demand is the simulator's own workload (the same seeded profiles ``hotplug bench decisions`` runs),
sampled every second. For each pair of prices, a dynamic programme over whole sizes finds, per VM, the
allocation path that minimises ``cores + unmet_price × unmet cores + change_price × changes`` knowing the
whole hour in advance. The points give the cost (× the per-sample oracle) that hindsight needs for a level
of unmet demand and a number of changes per VM-hour: a live decider, which learns of a burst only when it
starts, cannot do better than these. ``hotplug bench decisions`` measures where the live loop lands.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from services.simulator.cloud import MiniCloud


def best_path(demand: np.ndarray, low: int, high: int, unmet_price: float, change_price: float) -> np.ndarray:
    sizes = np.arange(low, high + 1, dtype=float)
    moving = change_price * (sizes[:, None] != sizes[None, :])  # from size i to size j
    back = np.zeros((len(demand), len(sizes)), dtype=np.int32)
    cost = sizes + unmet_price * np.maximum(0.0, demand[0] - sizes)
    for t in range(1, len(demand)):
        total = cost[:, None] + moving
        back[t] = total.argmin(0)
        cost = total.min(0) + sizes + unmet_price * np.maximum(0.0, demand[t] - sizes)
    j = int(cost.argmin())
    path = [j]
    for t in range(len(demand) - 1, 0, -1):
        j = int(back[t][j])
        path.append(j)
    chosen: np.ndarray = sizes[np.array(path[::-1])]
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="11,12")
    parser.add_argument("--vms", type=int, default=8)
    parser.add_argument("--duration", type=int, default=3600, help="simulated seconds per seed")
    parser.add_argument("--unmet-prices", default="5,20,50")
    parser.add_argument("--change-prices", default="100,300,1000")
    args = parser.parse_args()
    demands = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for vm in MiniCloud.generate(args.vms, seed, 0.0).vms.values():
            d = np.array([vm.workload.demand(float(t)) for t in range(args.duration)])
            demands.append((np.minimum(d, vm.max_vcpus), vm.min_vcpus, vm.max_vcpus))
    points = []
    for unmet_price in (float(p) for p in args.unmet_prices.split(",")):
        for change_price in (float(p) for p in args.change_prices.split(",")):
            alloc = unmet = total = oracle = 0.0
            changes = 0
            for d, low, high in demands:
                a = best_path(d, low, high, unmet_price, change_price)
                alloc += float(a.sum())
                unmet += float(np.maximum(0.0, d - a).sum())
                total += float(d.sum())
                oracle += float(np.clip(np.ceil(d - 1e-9), low, high).sum())
                changes += int((np.diff(a) != 0).sum())
            vm_hours = len(demands) * args.duration / 3600
            points.append(
                {
                    "unmet_price": unmet_price,
                    "change_price": change_price,
                    "cost_x_oracle": round(alloc / oracle, 3),
                    "unmet_pct": round(100 * unmet / total, 3),
                    "changes_per_vm_hour": round(changes / vm_hours, 1),
                }
            )
    print(
        json.dumps(
            {
                "bench": "decisions-bound",
                "seeds": args.seeds,
                "vms": args.vms,
                "duration_s": args.duration,
                "points": points,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
