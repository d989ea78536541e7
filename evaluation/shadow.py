"""Scoring live deciders after the fact: the allocation each shadow proposed against the demand that followed.

Pure. For every VM the samples give the demand of each interval (what ran, plus pressure where the source
reports it) and the allocation the active decider produced. A shadow's allocation in an interval is what it
proposed on the previous sample (a proposal would take effect from the next one, as in replay). Both are
scored with the replay's ``Tally``, so live and replay figures compare like for like. Without pressure,
demand above the active allocation is invisible; the scores then flatter every decider equally.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from evaluation.tally import ORACLE, Tally, oracle_allocations
from shared.messages import MetricSample, ScaleCommand
from shared.traces import VmSeries

ACTIVE = "active"


def score_shadows(samples: list[MetricSample], proposals: list[ScaleCommand]) -> dict[str, dict[str, float]]:
    """Scores of the active allocation, of each shadow decider (by name), and of the oracle."""
    by_vm: dict[tuple[str, str], list[MetricSample]] = defaultdict(list)
    for sample in samples:
        by_vm[(sample.host, sample.vm)].append(sample)
    proposed: dict[str, dict[tuple[str, str, float], int]] = defaultdict(dict)
    for p in proposals:
        if p.sample_time is not None and p.target_vcpus is not None:  # memory proposals are not scored here
            proposed[p.decider][(p.host, p.vm, p.sample_time)] = p.target_vcpus
    tallies = {name: Tally() for name in [ACTIVE, *sorted(proposed), ORACLE]}
    for (host, vm), vm_samples in by_vm.items():
        vm_samples.sort(key=lambda s: s.time)
        demand = [s.cpu_used_cores + (s.pressure_cores or 0.0) for s in vm_samples]
        size = max(s.max_vcpus for s in vm_samples)
        low = min(max(1, s.min_vcpus) for s in vm_samples)
        step = statistics.median(s.interval_s for s in vm_samples)
        series = VmSeries(vm, demand, size, step, low)
        tallies[ACTIVE].add(series, [s.online_vcpus for s in vm_samples])
        tallies[ORACLE].add(series, list(oracle_allocations([min(d, size) for d in demand], low, size)))
        for name, targets in proposed.items():
            allocation = [vm_samples[0].online_vcpus]
            for s in vm_samples[:-1]:
                allocation.append(targets.get((host, vm, s.time), allocation[-1]))
            tallies[name].add(series, allocation)
    return {name: tally.scores() for name, tally in tallies.items()}
