"""``captain``: an Autothrottle-Captain-style controller (docs/deciders.md §6), with starvation for throttling.

Starvation is the share of demand that could not run (``pressure / (used + pressure)``) when the source
reports pressure; without it, a saturated VM (utilisation ≥ ``saturated``) counts as fully starved. On
starvation above 3× target the limit grows multiplicatively (and a cut that caused it is rolled back);
otherwise it moves down towards ``max(recent usage) + margin·stdev`` by at most half, outside a 10 % band.
The margin adapts: it grows while starvation exceeds the target and shrinks while it does not.

Time, not samples: the usage history covers ``history_s`` seconds (1800, the 6 steps of 300 s this rule
used on traces), and the margin moves by ``(starvation − target)`` per ``period_s`` of samples, so a 1-s
sampler does not adapt it 300 times faster than a trace step does.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Annotated

import msgspec

from services.decider.policies.base import Observation, Params, PolicyBase, Recommendation


def _pstdev(count: int, total: float, squares: float) -> float:
    if count < 2:
        return 0.0
    mean = total / count
    return math.sqrt(max(0.0, squares / count - mean * mean))


class CaptainParams(Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    target_starvation: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.05
    initial_margin: Annotated[float, msgspec.Meta(ge=0)] = 3.0
    history_s: Annotated[float, msgspec.Meta(gt=0)] = 1800.0
    period_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    saturated: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.98


class CaptainState(msgspec.Struct):
    limit: float | None = None
    last_limit: float | None = None
    margin: float | None = None
    last_scale_down: bool = False
    usage: deque[tuple[float, float]] = msgspec.field(default_factory=deque)  # (time, cores)
    usage_sum: float = 0.0  # running sums over `usage`, so the spread costs the same at any cadence
    usage_squares: float = 0.0
    # Monotone queue of (time, cores): its head is the peak of the history.
    peaks: deque[tuple[float, float]] = msgspec.field(default_factory=deque)


class CaptainPolicy(PolicyBase[CaptainParams, CaptainState]):
    name = "captain"
    SWEEP = ("target_starvation", (0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.2, 0.3))
    params_type = CaptainParams
    state_type = CaptainState

    def starvation(self, obs: Observation) -> float:
        if obs.pressure_cores is not None:
            wanted = obs.used_cores + obs.pressure_cores
            return obs.pressure_cores / wanted if wanted > 0 else 0.0
        return 1.0 if obs.utilisation >= self.params.saturated else 0.0

    def recommend(self, state: CaptainState, obs: Observation) -> Recommendation:
        p = self.params
        if state.limit is None:
            state.limit = state.last_limit = float(obs.vcpus)
            state.margin = p.initial_margin
        assert state.last_limit is not None
        assert state.margin is not None
        horizon = obs.time - p.history_s
        used = obs.used_cores
        state.usage.append((obs.time, used))
        state.usage_sum += used
        state.usage_squares += used * used
        while state.usage[0][0] <= horizon:
            _, old = state.usage.popleft()
            state.usage_sum -= old
            state.usage_squares -= old * old
        while state.peaks and state.peaks[-1][1] <= used:
            state.peaks.pop()
        state.peaks.append((obs.time, used))
        while state.peaks[0][0] <= horizon:
            state.peaks.popleft()
        peak = state.peaks[0][1]
        pace = obs.interval_s / p.period_s
        thr = self.starvation(obs)
        target = p.target_starvation
        why = f"starvation {thr:.0%}"
        kind = "hold"
        if thr > 3 * target and state.last_scale_down:
            state.limit = 2 * state.last_limit - state.limit  # the last cut starved it: undo it
            state.margin += (thr - target) * pace
            state.last_scale_down = False
            why += ", last cut rolled back"
            kind = "rollback"
        state.last_limit = state.limit
        state.last_scale_down = False
        state.margin = max(0.0, state.margin + (thr - target) * pace)
        if thr > 3 * target:
            state.limit = max(state.limit + 1, state.limit * (1 + thr - 3 * target))
            why += ", growing"
            kind = "starvation"
        else:
            spread = _pstdev(len(state.usage), state.usage_sum, state.usage_squares)
            candidate = peak + state.margin * spread
            if candidate <= 0.9 * state.limit:
                state.limit = max(0.5 * state.limit, candidate)
                state.last_scale_down = True
                why += f", shrinking to peak {peak:.2f} + {state.margin:.1f}σ"
                kind = "shrink"
        state.limit = min(max(state.limit, 0.01), float(obs.max_vcpus))
        return Recommendation(max(1, math.ceil(state.limit - 1e-9)), why, kind)
