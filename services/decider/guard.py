"""Guard rails applied to every policy's recommendation, live and in replay: bounds, warm-up, cooldowns, a change
budget, step size. Pure.

* Warm-up: a VM the engine has seen for less than ``warmup_s`` (measured from its first observation, kept across
  a hand-over) is never shrunk: the policy's evidence window is not full yet. It may grow at once.
* Cooldowns: a scale-up waits ``up_cooldown_s`` after the last scale-up; a scale-down waits ``down_cooldown_s``
  after the last change in either direction, so a VM that just grew is not shrunk on the next quiet sample.
* Change budget: at most ``max_changes`` resizes of one VM per ``budget_window_s``, and within the rate limit the
  actuator advertised in its results, so that the actuator's own limit is a backstop never hit. A change counts
  from when its command is sent (``GuardState.changes``, kept by the engine), moved to when it took effect once
  that is known, and is dropped when its result says nothing changed.

All times are seconds of the shared clock.
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
    # No shrink before the VM has been observed this long (a policy with a longer evidence window sets more).
    warmup_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    # At most max_changes resizes per VM per budget_window_s: below the actuator's default 6 per 60 s.
    max_changes: Annotated[int, msgspec.Meta(ge=1)] = 4
    budget_window_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0


class Change(msgspec.Struct, array_like=True):
    """One resize counted against the budget: when, and the command that made it ("" when unknown)."""

    time: float
    command_id: str = ""


class GuardState(msgspec.Struct):
    last_up: float = float("-inf")
    last_change: float = float("-inf")
    # The engine's first observation of the VM (None until then; a snapshot from before warm-up existed too).
    first_seen: float | None = None
    changes: list[Change] = msgspec.field(default_factory=list)
    # The rate limit the actuator advertised for the VM (ScaleResult.rate_limit_*), once a result said it.
    actuator_max_changes: int | None = None
    actuator_window_s: float | None = None


def budgets(rails: GuardRails, state: GuardState) -> list[tuple[int, float]]:
    """Every (changes, window) limit the VM's resizes must keep within."""
    limits = [(rails.max_changes, rails.budget_window_s)]
    if state.actuator_max_changes is not None and state.actuator_window_s is not None:
        limits.append((state.actuator_max_changes, state.actuator_window_s))
    return limits


def budget_full(rails: GuardRails, state: GuardState, now: float) -> tuple[int, int, float] | None:
    """(changes counted, limit, window) of a budget with no room left at ``now``, or None."""
    for limit, window in budgets(rails, state):
        used = sum(1 for c in state.changes if now - c.time < window)
        if used >= limit:
            return used, limit, window
    return None


def apply_rails(
    rails: GuardRails, state: GuardState, obs: Observation, rec: Recommendation, *, warm: bool = True
) -> Recommendation:
    """The recommendation after the rails; ``target == obs.vcpus`` means hold. Updates ``state`` on a change.
    ``warm``: whether the warm-up holds a shrink (not for a preemptible VM's cores taken for a higher priority)."""
    n = obs.vcpus
    target = max(obs.min_vcpus, min(obs.max_vcpus, rec.target))
    if target == n:
        return Recommendation(target, rec.reason, rec.kind)
    if state.first_seen is None:
        state.first_seen = obs.time  # the engine sets it at the VM's first observation; this, if used alone
    if target < n and warm and obs.time - state.first_seen < rails.warmup_s:
        return Recommendation(
            n, f"{rec.reason}; warming up: {obs.time - state.first_seen:.0f} s of {rails.warmup_s:.0f} s", "warmup"
        )
    if target > n and obs.time - state.last_up < rails.up_cooldown_s:
        return Recommendation(n, f"{rec.reason}; held: up cooldown", "cooldown")
    if target < n and obs.time - state.last_change < rails.down_cooldown_s:
        return Recommendation(n, f"{rec.reason}; held: down cooldown", "cooldown")
    full = budget_full(rails, state, obs.time)
    if full is not None:
        used, limit, window = full
        return Recommendation(
            n, f"{rec.reason}; held: change budget ({used} of {limit} in {window:.0f} s)", "change-budget"
        )
    if target > n:
        target = min(target, n + rails.max_step_up)
        state.last_up = state.last_change = obs.time
    else:
        target = max(target, n - rails.max_step_down)
        state.last_change = obs.time
    return Recommendation(target, rec.reason, rec.kind)
