"""What any causal policy can reach on a trace set: hindsight bounds, printed as JSON.

    .venv/bin/python bench/replay_bounds.py planetlab ../shared/traces/planetlab/20110303 --vm-size 4

* ``static``: each VM held all day at its demand's q-quantile, chosen knowing the whole trace.
* ``persistence``: next step's allocation = ceil(true demand of the last step), knowing demand above the cap.
* ``markov``: next step's allocation = the q-quantile of what followed the current demand level in the whole
  trace (a predictor that has seen the future's statistics).

A policy whose (cost, unmet) point lies below these curves is out of reach for any online decider.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

from evaluation.tally import Tally
from shared.traces import VmSeries, load


def ceil_clamped(x: float, s: VmSeries) -> int:
    return max(s.min_vcpus, min(s.max_vcpus, math.ceil(x - 1e-9)))


def static(series: list[VmSeries], q: float) -> dict[str, float]:
    tally = Tally()
    for s in series:
        ordered = sorted(min(d, s.max_vcpus) for d in s.demand)
        tally.add(s, [ceil_clamped(ordered[min(len(ordered) - 1, int(q * len(ordered)))], s)] * len(ordered))
    return tally.scores()


def persistence(series: list[VmSeries], margin: float) -> dict[str, float]:
    tally = Tally()
    for s in series:
        d = [min(x, s.max_vcpus) for x in s.demand]
        tally.add(s, [s.max_vcpus] + [ceil_clamped(x * (1 + margin), s) for x in d[:-1]])
    return tally.scores()


def markov(series: list[VmSeries], q: float) -> dict[str, float]:
    tally = Tally()
    for s in series:
        d = [min(x, s.max_vcpus) for x in s.demand]
        following: dict[int, list[float]] = {}
        for a, b in itertools.pairwise(d):
            following.setdefault(round(a * 4), []).append(b)
        quantile = {k: sorted(v)[min(len(v) - 1, int(q * len(v)))] for k, v in following.items()}
        tally.add(s, [s.max_vcpus] + [ceil_clamped(quantile[round(a * 4)], s) for a in d[:-1]])
    return tally.scores()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("format")
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--vm-size", type=int)
    args = parser.parse_args()
    series = load(args.paths, args.format, vm_size=args.vm_size)
    keep = ("alloc_core_hours", "unmet_pct")
    report = {
        "static": {q: {k: static(series, q)[k] for k in keep} for q in (0.8, 0.9, 0.95, 0.98)},
        "persistence": {m: {k: persistence(series, m)[k] for k in keep} for m in (0.0, 0.25, 0.5, 1.0)},
        "markov": {q: {k: markov(series, q)[k] for k in keep} for q in (0.8, 0.9, 0.95)},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
