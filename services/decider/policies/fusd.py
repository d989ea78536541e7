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

    def __init__(self, params: FusdParams) -> None:
        super().__init__(params)
        # Worked out once: the reason's fixed part, and α_down for the last interval seen (a policy serves many VMs,
        # nearly all at one cadence; one tuple, replaced whole, so two threads never see half of it).
        self._reason_tail = f" cores at {params.warm:.0%} warm"
        self._fading: tuple[float, float] = (math.nan, math.nan)

    def _alpha_down(self, interval_s: float) -> float:
        """``α_down^(interval_s / step_s)``: the weight of the past after a falling sample of ``interval_s``."""
        seen, alpha = self._fading
        if seen != interval_s:
            alpha = self.params.alpha_down ** (interval_s / self.params.step_s)
            self._fading = (interval_s, alpha)
        return alpha

    def recommend(self, state: FusdState, obs: Observation) -> Recommendation:
        p = self.params
        observed = obs.used_cores
        estimate = state.estimate
        if estimate is None:
            estimate = observed
        else:
            alpha = p.alpha_up if observed > estimate else self._alpha_down(obs.interval_s)
            estimate = alpha * estimate + (1 - alpha) * observed
            estimate = estimate if estimate > 0.0 else 0.0  # max(0.0, x) without a call: the same float (a NaN too)
        state.estimate = estimate
        target = math.ceil(estimate / p.warm - 1e-9)
        return Recommendation(target if target > 1 else 1, f"predicted {estimate:.2f}{self._reason_tail}", "prediction")
