"""Guard rails applied to every policy's recommendation, live and in replay: bounds, cooldowns, step size.

Pure: the state is two timestamps per VM. A scale-up waits ``up_cooldown_s`` after the last scale-up; a
scale-down waits ``down_cooldown_s`` after the last change in either direction, so a VM that just grew
is not shrunk on the next quiet sample.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from services.decider.policies.base import Observation, Recommendation


class GuardRails(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    up_cooldown_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    down_cooldown_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    max_step_up: Annotated[int, msgspec.Meta(ge=1)] = 64
    max_step_down: Annotated[int, msgspec.Meta(ge=1)] = 1


class GuardState(msgspec.Struct):
    last_up: float = float("-inf")
    last_change: float = float("-inf")


def apply_rails(rails: GuardRails, state: GuardState, obs: Observation, rec: Recommendation) -> Recommendation:
    """The recommendation after the rails; ``target == obs.vcpus`` means hold. Updates ``state`` on a change."""
    n = obs.vcpus
    target = max(obs.min_vcpus, min(obs.max_vcpus, rec.target))
    if target > n:
        if obs.time - state.last_up < rails.up_cooldown_s:
            return Recommendation(n, f"{rec.reason}; held: up cooldown", "cooldown")
        target = min(target, n + rails.max_step_up)
        state.last_up = state.last_change = obs.time
    elif target < n:
        if obs.time - state.last_change < rails.down_cooldown_s:
            return Recommendation(n, f"{rec.reason}; held: down cooldown", "cooldown")
        target = max(target, n - rails.max_step_down)
        state.last_change = obs.time
    return Recommendation(target, rec.reason, rec.kind)
