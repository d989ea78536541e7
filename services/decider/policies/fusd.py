"""``fusd``: Xiao et al.'s "fast up, slow down" predictor (docs/deciders.md §5).

An asymmetric EWMA of the CPU used: ``E = α·E + (1 − α)·O`` with a negative α while load rises (it
overshoots on purpose) and an ordinary one while it falls; ``n' = ceil(E / warm)``.

The published α are per step of ``step_s`` (300 s, the traces' step). Falling, the weight of the past fades
with time, ``α_down^(Δ / step_s)`` for a sample of Δ seconds, so the estimate's half-life is the same at any
cadence; rising, the overshoot is applied to each sample as published (it never compounds: the next sample
finds the estimate above the load).
"""

from __future__ import annotations

import math
from typing import Annotated

import msgspec

from services.decider.policies.base import Observation, Params, PolicyBase, Recommendation


class FusdParams(Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    alpha_up: Annotated[float, msgspec.Meta(ge=-1, lt=1)] = -0.2
    alpha_down: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.7
    warm: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.65
    step_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0


class FusdState(msgspec.Struct):
    estimate: float | None = None


class FusdPolicy(PolicyBase[FusdParams, FusdState]):
    name = "fusd"
    SWEEP = ("warm", (0.3, 0.4, 0.5, 0.65, 0.8, 0.9, 0.95, 1.0))
    params_type = FusdParams
    state_type = FusdState

    def recommend(self, state: FusdState, obs: Observation) -> Recommendation:
        p = self.params
        observed = obs.used_cores
        if state.estimate is None:
            state.estimate = observed
        else:
            alpha = p.alpha_up if observed > state.estimate else p.alpha_down ** (obs.interval_s / p.step_s)
            state.estimate = max(0.0, alpha * state.estimate + (1 - alpha) * observed)
        target = max(1, math.ceil(state.estimate / p.warm - 1e-9))
        return Recommendation(target, f"predicted {state.estimate:.2f} cores at {p.warm:.0%} warm", "prediction")
