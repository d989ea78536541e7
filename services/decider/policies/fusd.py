"""``fusd``: Xiao et al.'s "fast up, slow down" predictor (docs/deciders.md §5).

An asymmetric EWMA of the CPU used: ``E = α·E + (1 − α)·O`` with a negative α while load rises (it
overshoots on purpose) and an ordinary one while it falls; ``n' = ceil(E / warm)``.
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


class FusdState(msgspec.Struct):
    estimate: float | None = None


class FusdPolicy(PolicyBase[FusdParams, FusdState]):
    name = "fusd"
    params_type = FusdParams
    state_type = FusdState
    default_rails = {"up_cooldown_s": 0.0, "down_cooldown_s": 0.0, "max_step_down": 1024}

    def recommend(self, state: FusdState, obs: Observation) -> Recommendation:
        p = self.params
        observed = obs.used_cores
        if state.estimate is None:
            state.estimate = observed
        else:
            alpha = p.alpha_up if observed > state.estimate else p.alpha_down
            state.estimate = max(0.0, alpha * state.estimate + (1 - alpha) * observed)
        target = max(1, math.ceil(state.estimate / p.warm - 1e-9))
        return Recommendation(target, f"predicted {state.estimate:.2f} cores at {p.warm:.0%} warm",
                              "prediction")
