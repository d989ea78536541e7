"""``threshold``: the seed's rule. One vCPU up when utilisation stays above ``upper`` for ``k`` samples,
one down when it stays below ``lower`` for ``k`` samples, unless the same load on one vCPU fewer would
cross ``upper`` at once (the post-action guard against flapping). Cooldowns come from the guard rails.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from services.decider.policies.base import Observation, Params, PolicyBase, Recommendation


class ThresholdParams(Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    upper: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.80
    lower: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.30
    k: Annotated[int, msgspec.Meta(ge=1)] = 3

    def __post_init__(self) -> None:
        if self.lower >= self.upper:
            raise ValueError(f"threshold.lower ({self.lower}) must be below threshold.upper ({self.upper})")


class ThresholdState(msgspec.Struct):
    above: int = 0
    below: int = 0


class ThresholdPolicy(PolicyBase[ThresholdParams, ThresholdState]):
    name = "threshold"
    params_type = ThresholdParams
    state_type = ThresholdState
    default_rails = {"up_cooldown_s": 10.0, "down_cooldown_s": 30.0}

    def recommend(self, state: ThresholdState, obs: Observation) -> Recommendation:
        p = self.params
        n = obs.vcpus
        rho = obs.utilisation
        if rho > p.upper:
            state.above, state.below = state.above + 1, 0
        elif rho < p.lower:
            state.above, state.below = 0, state.below + 1
        else:
            state.above = state.below = 0
        if state.above >= p.k:
            return Recommendation(n + 1, f"cpu {rho:.0%} > {p.upper:.0%} for {state.above} samples",
                                  "above-upper")
        if state.below >= p.k and n > 1 and rho * n / (n - 1) < p.upper:
            return Recommendation(n - 1, f"cpu {rho:.0%} < {p.lower:.0%} for {state.below} samples",
                                  "below-lower")
        return Recommendation(n, f"cpu {rho:.0%} within [{p.lower:.0%}, {p.upper:.0%}]")
