"""Memory traces through the memory policy and its baselines, per half of the VMs, and swept along each rule's knob.
Pure (the traces come loaded: ``shared.memory_traces``).

A VM starts at its provisioned size: that is what it has when the autoscaler takes it over, and the first used value
cannot be the start, since 11 of the 40 Bitbrains VMs have none (their first row reads 0). At each step the rule
sees the use the VM could have had, ``min(used, size)``, and what did not fit as swapping (its bytes over the step),
as a guest would show it; its decision takes effect from the next step. Between two samples (5 minutes) a rule sees
nothing, so its headroom must cover what the guest adds in 5 minutes. A step whose use was not measured is held
through: the rule is not asked and the score leaves it out (``evaluation.memory_scores``).

There is one month of memory traces, so the 40 VMs are split in two halves by sorted file name: "a" (even places)
is where the policy's defaults were chosen, "b" (odd places) checks them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from evaluation.frontier import cost_at
from evaluation.memory_baselines import MomRule, NeonRule, StaticRule
from evaluation.memory_scores import ReplayMemoryTally, used_clipped
from services.decider.memory import MemoryDecision, MemoryObservation, MemoryPolicy, MemorySettings
from services.decider.memory.policy import DEFAULT_STEP_BYTES
from shared.memory_traces import MemorySeries

HALVES = ("a", "b")
DEFAULT_LEVELS = (0.01, 0.05, 0.1, 0.5, 1.0)  # shortfall, % of VM-samples


class Rule(Protocol):
    def new_state(self) -> Any: ...

    def decide(self, state: Any, obs: MemoryObservation) -> MemoryDecision | None: ...


@dataclass(frozen=True)
class RuleSpec:
    """A rule, the knob a sweep moves, the values tried, and how to make the rule at one of them."""

    rule: str
    knob: str
    values: tuple[float, ...]
    make: Callable[[float], Rule]


def _policy(settings: MemorySettings, knob: str) -> Callable[[float], Rule]:
    whole = isinstance(getattr(settings, knob), int)  # a count of samples is swept as whole numbers
    return lambda value: MemoryPolicy(msgspec.structs.replace(settings, **{knob: round(value) if whole else value}))


def rule_specs(settings: MemorySettings | None = None) -> list[RuleSpec]:
    """The sweeps: the memory policy (with ``settings`` but for the knob swept) along its headroom, the knob, and
    along its window, which moves the trade-off as much on these traces; then the baselines along theirs."""
    settings = settings or MemorySettings()
    samples = tuple(float(n) for n in (12, 36, 72, 144, 288, 576, 1152))  # 1 h to 4 days of 5-minute samples
    return [
        RuleSpec("memory", "headroom", (0.05, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0), _policy(settings, "headroom")),
        RuleSpec("memory", "window_samples", samples, _policy(settings, "window_samples")),
        RuleSpec("mom", "headroom", (0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 4.0), MomRule),
        RuleSpec("neon", "upper", (0.95, 0.85, 0.7, 0.5, 0.3, 0.2, 0.1), NeonRule),
    ]


def half(series: Sequence[MemorySeries], which: str) -> list[MemorySeries]:
    """Half ``which`` of ``series``: "a" the even places in file-name order, "b" the odd ones."""
    if which not in HALVES:
        raise ValueError(f"no half {which!r}; choose from {', '.join(HALVES)}")
    ordered = sorted(series, key=lambda s: s.name)
    return ordered[HALVES.index(which) :: 2]


def replay_memory(series: MemorySeries, rule: Rule, step_bytes: int = DEFAULT_STEP_BYTES) -> list[int]:
    """The bytes the VM of ``series`` has at each step under ``rule``; the static baseline has what was provisioned."""
    if isinstance(rule, StaticRule):
        return list(series.provisioned)
    state = rule.new_state()
    size = series.provisioned[0]
    allocations = []
    for i, (used, prov) in enumerate(zip(used_clipped(series), series.provisioned, strict=True)):
        allocations.append(size)
        if used is None:
            continue
        seen = used if used < size else size
        obs = MemoryObservation(
            time=i * series.step_s,
            size_bytes=size,
            used_bytes=seen,
            min_bytes=step_bytes,
            max_bytes=prov,
            step_bytes=step_bytes,
            swap_in_bytes_per_s=(used - seen) / series.step_s,
            interval_s=series.step_s,
        )
        decision = rule.decide(state, obs)
        if decision is not None:
            size = decision.target_bytes
    return allocations


def score(series: Sequence[MemorySeries], rule: Rule) -> dict[str, float]:
    tally = ReplayMemoryTally()
    for s in series:
        tally.add(s, replay_memory(s, rule))
    return tally.scores()


def replay_report(series: Sequence[MemorySeries], settings: MemorySettings | None = None) -> dict[str, object]:
    """Each rule at its default, and the static baseline, on each half and on all VMs."""
    settings = settings or MemorySettings()
    rules: dict[str, Rule] = {
        "static": StaticRule(),
        "memory": MemoryPolicy(settings),
        "mom": MomRule(),
        "neon": NeonRule(),
    }
    sets = {"a": half(series, "a"), "b": half(series, "b"), "all": list(series)}
    return {
        "vms": {name: len(s) for name, s in sets.items()},
        "settings": msgspec.to_builtins(settings),
        "halves": {name: {rule: score(s, r) for rule, r in rules.items()} for name, s in sets.items()},
    }


def frontier_report(
    series: Sequence[MemorySeries],
    settings: MemorySettings | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
    specs: Sequence[RuleSpec] | None = None,
) -> dict[str, object]:
    """Each rule swept along its knob on each half: its points, and the lowest × oracle it reaches at each level
    of shortfall (``evaluation.frontier.cost_at``: mixing two settings costs the mix); None: out of reach."""
    out: dict[str, object] = {}
    for name in HALVES:
        part = half(series, name)
        sweeps = []
        for spec in rule_specs(settings) if specs is None else specs:
            points = [(v, score(part, spec.make(v))) for v in spec.values]
            pairs = [(s["shortfall_pct"], s["ratio_to_oracle"]) for _, s in points]
            sweeps.append(
                {
                    "rule": spec.rule,
                    "knob": spec.knob,
                    "sweep": [{"value": v, **s} for v, s in points],
                    "cost_at": {f"{level:g}": cost_at(pairs, level) for level in levels},
                }
            )
        out[name] = {"vms": len(part), "static": score(part, StaticRule()), "sweeps": sweeps}
    return {"levels_pct": list(levels), "halves": out}
