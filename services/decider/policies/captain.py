"""``captain``: an Autothrottle-Captain-style controller (docs/deciders.md §6), with starvation for throttling.

Starvation is the share of demand that could not run (``pressure / (used + pressure)``) when the source
reports pressure; without it, a saturated VM (utilisation ≥ ``saturated``) counts as fully starved. On
starvation above 3× target the limit grows multiplicatively (and a cut that caused it is rolled back);
otherwise it moves down towards ``max(recent usage) + margin·stdev`` by at most half, outside a 10 % band.
The margin adapts: it grows while starvation exceeds the target and shrinks while it does not.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Annotated

import msgspec

from services.decider.policies.base import Observation, Params, PolicyBase, Recommendation


def _pstdev(values: deque[float]) -> float:
    count = len(values)
    if count < 2:
        return 0.0
    mean = sum(values) / count
    return math.sqrt(max(0.0, sum((v - mean) ** 2 for v in values) / count))


class CaptainParams(Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    target_starvation: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.05
    initial_margin: Annotated[float, msgspec.Meta(ge=0)] = 3.0
    history: Annotated[int, msgspec.Meta(ge=2)] = 6
    saturated: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.98


class CaptainState(msgspec.Struct):
    limit: float | None = None
    last_limit: float | None = None
    margin: float | None = None
    last_scale_down: bool = False
    usage: deque[float] = msgspec.field(default_factory=deque)


class CaptainPolicy(PolicyBase[CaptainParams, CaptainState]):
    name = "captain"
    params_type = CaptainParams
    state_type = CaptainState
    default_rails = {"up_cooldown_s": 0.0, "down_cooldown_s": 0.0, "max_step_down": 1024}

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
        state.usage.append(obs.used_cores)
        if len(state.usage) > p.history:
            state.usage.popleft()
        thr = self.starvation(obs)
        target = p.target_starvation
        why = f"starvation {thr:.0%}"
        kind = "hold"
        if thr > 3 * target and state.last_scale_down:
            state.limit = 2 * state.last_limit - state.limit  # the last cut starved it: undo it
            state.margin += thr - target
            state.last_scale_down = False
            why += ", last cut rolled back"
            kind = "rollback"
        state.last_limit = state.limit
        state.last_scale_down = False
        state.margin = max(0.0, state.margin + (thr - target))
        if thr > 3 * target:
            state.limit = max(state.limit + 1, state.limit * (1 + thr - 3 * target))
            why += ", growing"
            kind = "starvation"
        else:
            spread = _pstdev(state.usage)
            candidate = max(state.usage) + state.margin * spread
            if candidate <= 0.9 * state.limit:
                state.limit = max(0.5 * state.limit, candidate)
                state.last_scale_down = True
                why += f", shrinking to peak {max(state.usage):.2f} + {state.margin:.1f}σ"
                kind = "shrink"
        state.limit = min(max(state.limit, 0.01), float(obs.max_vcpus))
        return Recommendation(max(1, math.ceil(state.limit - 1e-9)), why, kind)
