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

    def __init__(self, params: CaptainParams) -> None:
        super().__init__(params)
        # Read at every sample of every VM: worked out once (the params are frozen).
        self._starving = 3 * params.target_starvation  # starvation above this grows the limit

    def starvation(self, obs: Observation) -> float:
        pressure = obs.pressure_cores
        if pressure is not None:
            wanted = obs.used_cores + pressure
            return pressure / wanted if wanted > 0 else 0.0
        return 1.0 if obs.utilisation >= self.params.saturated else 0.0

    def _peak_and_spread(self, state: CaptainState, now: float, used: float) -> tuple[float, float]:
        """Take in this sample's usage; the peak and the spread of the usage over the history."""
        horizon = now - self.params.history_s
        usage = state.usage
        usage.append((now, used))
        state.usage_sum += used
        state.usage_squares += used * used
        while usage[0][0] <= horizon:
            _, old = usage.popleft()
            state.usage_sum -= old
            state.usage_squares -= old * old
        peaks = state.peaks
        while peaks and peaks[-1][1] <= used:
            peaks.pop()
        peaks.append((now, used))
        while peaks[0][0] <= horizon:
            peaks.popleft()
        return peaks[0][1], _pstdev(len(usage), state.usage_sum, state.usage_squares)

    def recommend(self, state: CaptainState, obs: Observation) -> Recommendation:
        p = self.params
        limit = state.limit
        if limit is None:
            limit = state.last_limit = float(obs.vcpus)
            state.margin = p.initial_margin
        last_limit = state.last_limit
        margin = state.margin
        assert last_limit is not None
        assert margin is not None
        peak, spread = self._peak_and_spread(state, obs.time, obs.used_cores)
        pace = obs.interval_s / p.period_s
        thr = self.starvation(obs)
        target = p.target_starvation
        starving = thr > self._starving
        why = f"starvation {thr:.0%}"
        kind = "hold"
        if starving and state.last_scale_down:
            limit = 2 * last_limit - limit  # the last cut starved it: undo it
            margin += (thr - target) * pace
            why += ", last cut rolled back"
            kind = "rollback"
        state.last_limit = limit
        shrunk = False
        # max(0.0, x) and the max and min below written out: the same floats (a NaN too), without a call per sample.
        margin = margin + (thr - target) * pace
        state.margin = margin = margin if margin > 0.0 else 0.0
        if starving:
            grown = limit * (1 + thr - self._starving)
            limit = grown if grown > limit + 1 else limit + 1
            why += ", growing"
            kind = "starvation"
        else:
            candidate = peak + margin * spread
            if candidate <= 0.9 * limit:
                half = 0.5 * limit
                limit = candidate if candidate > half else half
                shrunk = True
                why += f", shrinking to peak {peak:.2f} + {margin:.1f}σ"
                kind = "shrink"
        state.last_scale_down = shrunk
        limit = 0.01 if limit < 0.01 else limit
        highest = float(obs.max_vcpus)
        state.limit = limit = highest if highest < limit else limit
        wanted = math.ceil(limit - 1e-9)
        return Recommendation(wanted if wanted > 1 else 1, why, kind)
