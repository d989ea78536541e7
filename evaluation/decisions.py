"""Scoring a live run's decisions from what the bus carried: pure, fed decoded samples, commands and results.

Used by ``hotplug bench decisions`` (per policy and seed) and by the summary of ``hotplug up``.

* **Refused**: a result that is not ok, counted by its error code. The share is of the results (the commands that
  were answered); commands still unanswered when the run stopped are counted apart.
* **Change**: an ok result whose VM ended with another vCPU count than it had (``vcpus_before`` → ``vcpus_after``).
  A command that found the VM already at its target is not a change.
* **Undone within 60 s**: a change whose direction the *next* change of the same VM reverses (a grow followed by a
  shrink, or the reverse, even in part: 2→4 then 4→3 counts) with the two results at most 60 s apart on the shared
  (simulated) clock. That is flapping: the first change cost a hot-plug and bought nothing that lasted.
* **Changes per VM-hour**: changes over the VM-hours observed, the sum of the samples' intervals.
* **Cost × oracle and unmet %**: exactly as ``hotplug compare`` scores the active allocation
  (``evaluation.shadow.score_shadows``, the replay's ``Tally``): per sample, demand = CPU used + pressure
  (the simulator reports all demand beyond the online vCPUs as pressure, so this is the true demand), the
  allocation is the online vCPUs, and the oracle allocates ``ceil(demand)`` within the VM's bounds.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from evaluation.memory_tally import MemoryTally
from evaluation.shadow import ACTIVE, score_shadows
from shared.messages import MetricSample, Resource, ScaleCommand, ScaleResult

UNDO_WINDOW_S = 60.0


@dataclass(frozen=True)
class Change:
    """One applied resize of one VM, at the time its result says it was done."""

    time: float
    host: str
    vm: str
    before: int
    after: int

    @property
    def direction(self) -> int:
        return 1 if self.after > self.before else -1


def applied_changes(results: Iterable[ScaleResult]) -> list[Change]:
    """The changes the results report, in time order."""
    changes = [
        Change(r.time, r.host, r.vm, r.vcpus_before, r.vcpus_after)
        for r in results
        if r.ok and r.vcpus_before is not None and r.vcpus_after is not None and r.vcpus_after != r.vcpus_before
    ]
    changes.sort(key=lambda c: c.time)
    return changes


def undone_changes(changes: Iterable[Change], within_s: float = UNDO_WINDOW_S) -> list[Change]:
    """The changes reversed by the next change of the same VM within ``within_s`` seconds."""
    by_vm: dict[tuple[str, str], list[Change]] = defaultdict(list)
    for change in sorted(changes, key=lambda c: c.time):
        by_vm[(change.host, change.vm)].append(change)
    undone = []
    for vm_changes in by_vm.values():
        for first, following in itertools.pairwise(vm_changes):
            if following.direction != first.direction and following.time - first.time <= within_s:
                undone.append(first)
    undone.sort(key=lambda c: c.time)
    return undone


def refusals(results: Iterable[ScaleResult]) -> dict[str, int]:
    """Results that are not ok, by error code (``unknown`` when the result names none)."""
    return dict(Counter(r.error_code.value if r.error_code else "unknown" for r in results if not r.ok))


def _pct(part: float, whole: float) -> float:
    return 100 * part / whole if whole else 0.0


def score_run(
    samples: list[MetricSample],
    commands: list[ScaleCommand],
    results: list[ScaleResult],
    undo_window_s: float = UNDO_WINDOW_S,
) -> dict[str, object]:
    """Every figure of the decisions benchmark for one run (or several pooled: give each its own host names). The
    vCPU figures count vCPU commands only; memory's, where samples carried memory, are under ``memory``."""
    memory_commands = [c for c in commands if c.resource is Resource.MEMORY]
    memory_results = [r for r in results if r.resource is Resource.MEMORY]
    commands = [c for c in commands if c.resource is Resource.VCPU]
    results = [r for r in results if r.resource is Resource.VCPU]
    answered = {r.command_id for r in results}
    refused = refusals(results)
    changes = applied_changes(results)
    undone = undone_changes(changes, undo_window_s)
    vm_hours = sum(s.interval_s for s in samples) / 3600
    active = score_shadows(samples, [])[ACTIVE] if samples else None
    return {
        "vms": len({(s.host, s.vm) for s in samples}),
        "samples": len(samples),
        "vm_hours": round(vm_hours, 4),
        "commands": len(commands),
        "results": len(results),
        "unanswered": sum(1 for c in commands if c.id not in answered),
        "refused": sum(refused.values()),
        "refused_pct": round(_pct(sum(refused.values()), len(results)), 2),
        "refused_by_code": dict(sorted(refused.items())),
        "changes": len(changes),
        "undone_60s": len(undone),
        "undone_pct": round(_pct(len(undone), len(changes)), 2),
        "changes_per_vm_hour": round(len(changes) / vm_hours, 2) if vm_hours else 0.0,
        "cost_x_oracle": round(active["ratio_to_oracle"], 3) if active else None,
        "unmet_pct": round(active["unmet_pct"], 3) if active else None,
        "alloc_core_hours": round(active["alloc_core_hours"], 3) if active else None,
        "oracle_core_hours": round(active["oracle_core_hours"], 3) if active else None,
        "memory": score_memory(samples, memory_commands, memory_results),
    }


def score_memory(
    samples: list[MetricSample], commands: list[ScaleCommand], results: list[ScaleResult]
) -> dict[str, object] | None:
    """The memory figures of a run (None: no sample carried memory): memory allocated ÷ what the guests used, swap
    time, OOM kills, memory changes per VM-hour, and the memory orders refused."""
    tally = MemoryTally()
    for sample in samples:
        tally.add_sample(sample)
    if not tally.vm_seconds:
        return None
    for result in results:
        tally.add_result(result)
    scores = tally.scores()
    refused = refusals(results)
    return {
        "commands": len(commands),
        "refused_pct": round(_pct(sum(refused.values()), len(results)), 2),
        "refused_by_code": dict(sorted(refused.items())),
        "changes": tally.changes,
        "changes_per_vm_hour": round(scores["memory_changes_per_vm_hour"], 2),
        "x_used": round(scores["memory_ratio_to_oracle"], 3),
        "swap_pct": round(scores["swap_pct"], 3),
        "oom_kills": tally.oom_kills,
        "given_back_gib": round(scores["memory_given_back_gib"], 2),
        "alloc_gib_hours": round(scores["memory_alloc_gib_hours"], 3),
    }


def sample_health(samples: list[MetricSample], interval_s: float, window_s: float) -> dict[str, object]:
    """Did the collector keep up? Samples received against those a 1-per-interval collector would send over
    ``window_s``, and how many came late (an interval over 1.5 × the nominal one: the collector skipped a tick).
    A window holding both its ends may hold one sample more per VM than expected; missing is never below 0."""
    vms = len({(s.host, s.vm) for s in samples})
    expected = vms * int(window_s / interval_s + 1e-9)
    late = sum(1 for s in samples if s.interval_s > 1.5 * interval_s)
    longest = max((s.interval_s for s in samples), default=0.0)
    return {
        "received": len(samples),
        "expected": expected,
        "missing_pct": round(_pct(max(0, expected - len(samples)), expected), 2),
        "late": late,
        "longest_interval_s": round(longest, 3),
    }


def in_window(
    samples: list[MetricSample], commands: list[ScaleCommand], results: list[ScaleResult], start: float, end: float
) -> tuple[list[MetricSample], list[ScaleCommand], list[ScaleResult]]:
    """What a run did in ``[start, end]`` of its clock: the samples taken then, the commands given then, and the
    results of those commands (answered after ``end`` too, so a command given near the end still counts once)."""
    kept_samples = [s for s in samples if start <= s.time <= end]
    kept_commands = [c for c in commands if start <= c.time <= end]
    ids = {c.id for c in kept_commands}
    return kept_samples, kept_commands, [r for r in results if r.command_id in ids]
