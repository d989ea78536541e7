"""Simple memory rules to compare the memory policy with, each with the policy's ``new_state``/``decide`` shape. Pure.

* ``static``: the provisioned size, never changed (what a VM has without an autoscaler).
* ``mom``: oVirt MoM's balloon rule as it reads at a 5-minute sample: every 10 s it moves the balloon at most 5 %
  towards a free-memory target; here at most 5 % of the size per sample towards used × (1 + headroom) [derived].
* ``neon``: Neon's autoscaler-agent shape: grow when used passes ``upper`` of the size, shrink when it falls below
  ``upper`` / 2, each time to the size at which used is ¾ of ``upper`` (the middle of the band) [derived].
"""

from __future__ import annotations

import math

from services.decider.memory import MemoryDecision, MemoryObservation
from shared.units import align_down, align_up

MOM_STEP = 0.05  # MoM's balloon moves at most 5 % per round


class StaticRule:
    """Keeps the size the VM has."""

    def new_state(self) -> None:
        return None

    def decide(self, state: None, obs: MemoryObservation) -> MemoryDecision | None:
        return None


def _within(size: float, obs: MemoryObservation) -> int:
    step = obs.step_bytes
    low, high = align_up(obs.min_bytes, step), align_down(obs.max_bytes, step)
    aligned = align_up(math.ceil(size), step)
    return max(low, min(high, aligned))


class MomRule:
    """At most ``MOM_STEP`` of the size per sample towards used × (1 + ``headroom``)."""

    def __init__(self, headroom: float = 0.2) -> None:
        self.headroom = headroom

    def new_state(self) -> None:
        return None

    def decide(self, state: None, obs: MemoryObservation) -> MemoryDecision | None:
        size, used = obs.size_bytes, obs.used_bytes
        if used is None:
            return None
        goal = used * (1 + self.headroom)
        goal = min(max(goal, size * (1 - MOM_STEP)), size * (1 + MOM_STEP))
        target = _within(goal, obs)
        return MemoryDecision(target, "mom", "mom") if abs(target - size) >= obs.step_bytes else None


class NeonRule:
    """Grow above ``upper`` × size, shrink below half of it, to the size at which used is ¾ × ``upper``."""

    def __init__(self, upper: float = 0.85) -> None:
        self.upper = upper

    def new_state(self) -> None:
        return None

    def decide(self, state: None, obs: MemoryObservation) -> MemoryDecision | None:
        size, used = obs.size_bytes, obs.used_bytes
        if used is None or self.upper / 2 * size <= used <= self.upper * size:
            return None
        target = _within(used / (0.75 * self.upper), obs)
        return MemoryDecision(target, "neon", "neon") if target != size else None
