"""``threshold``: the seed's rule. One vCPU up when utilisation stays above ``upper`` for ``sustain_s``
seconds, one down when it stays below ``lower`` for ``sustain_s``, unless the same load on one vCPU fewer
would cross ``upper`` at once (the post-action guard against flapping). Cooldowns come from the guard rails.

The seed counted ``k`` = 3 consecutive samples at its 1-s sampling; here that is time, 3 s, so the rule
means the same at any cadence: a sample covers its whole interval, so one 300-s trace step is enough.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from services.decider.policies.base import Observation, Params, PolicyBase, Recommendation


class ThresholdParams(Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    upper: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.80
    lower: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.30
    sustain_s: Annotated[float, msgspec.Meta(ge=0)] = 3.0

    def __post_init__(self) -> None:
        if self.lower >= self.upper:
            raise ValueError(f"threshold.lower ({self.lower}) must be below threshold.upper ({self.upper})")


class ThresholdState(msgspec.Struct):
    above_s: float = 0.0  # how long utilisation has stayed above upper, up to this sample's end
    below_s: float = 0.0


class ThresholdPolicy(PolicyBase[ThresholdParams, ThresholdState]):
    name = "threshold"
    SWEEP = ("upper", (0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95))
    params_type = ThresholdParams
    state_type = ThresholdState
    default_rails = {"up_cooldown_s": 10.0, "down_cooldown_s": 30.0}

    def __init__(self, params: ThresholdParams) -> None:
        super().__init__(params)
        # The reasons' fixed parts, formatted once rather than at every sample.
        self._upper_pct = f"{params.upper:.0%}"
        self._lower_pct = f"{params.lower:.0%}"
        self._band = f" within [{self._lower_pct}, {self._upper_pct}]"

    def recommend(self, state: ThresholdState, obs: Observation) -> Recommendation:
        p = self.params
        n = obs.vcpus
        rho = obs.utilisation
        above_s = below_s = 0.0
        if rho > p.upper:
            above_s = state.above_s + obs.interval_s
        elif rho < p.lower:
            below_s = state.below_s + obs.interval_s
        state.above_s, state.below_s = above_s, below_s
        if above_s > 0 and above_s >= p.sustain_s:
            return Recommendation(n + 1, f"cpu {rho:.0%} > {self._upper_pct} for {above_s:g} s", "above-upper")
        if below_s > 0 and below_s >= p.sustain_s and n > 1 and rho * n / (n - 1) < p.upper:
            return Recommendation(n - 1, f"cpu {rho:.0%} < {self._lower_pct} for {below_s:g} s", "below-lower")
        return Recommendation(n, f"cpu {rho:.0%}{self._band}")
