"""``hpa``: Kubernetes' Horizontal Pod Autoscaler rule applied to vCPUs (docs/deciders.md §2).

``n' = ceil(used / target)`` outside a ±tolerance dead band; raised only to the lowest recommendation of
the scale-up window, lowered only to the highest of the scale-down stabilisation window; a rise is capped
at ``max(n + up_limit_vcpus, n × (1 + up_limit_pct/100))`` per decision.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Annotated

import msgspec

from services.decider.policies.base import Observation, Params, PolicyBase, Recommendation


class HpaParams(Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    target: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.80
    tolerance: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.10
    up_window_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    down_window_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    up_limit_vcpus: Annotated[int, msgspec.Meta(ge=1)] = 4
    up_limit_pct: Annotated[float, msgspec.Meta(ge=0)] = 100.0


class HpaState(msgspec.Struct):
    history: deque[tuple[float, int]] = msgspec.field(default_factory=deque)


def _window_extremes(history: deque[tuple[float, int]], up_since: float, down_since: float) -> tuple[int, int]:
    """The lowest recommendation since ``up_since`` and the highest since ``down_since``, in one pass (a loop, not
    two generators: most histories hold two or three entries, and this runs at every sample)."""
    lowest: int | None = None
    highest: int | None = None
    for t, r in history:
        if t >= up_since and (lowest is None or r < lowest):
            lowest = r
        if t >= down_since and (highest is None or r > highest):
            highest = r
    if lowest is None or highest is None:  # only for a time that is not finite: the newest entry is in both windows
        raise ValueError("no recommendation within a window")
    return lowest, highest


class HpaPolicy(PolicyBase[HpaParams, HpaState]):
    name = "hpa"
    SWEEP = ("target", (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95))
    params_type = HpaParams
    state_type = HpaState

    def __init__(self, params: HpaParams) -> None:
        super().__init__(params)
        # Read at every sample of every VM: worked out once (the params are frozen).
        self._longest_window_s = max(params.up_window_s, params.down_window_s)
        self._up_factor = 1 + params.up_limit_pct / 100
        self._target_pct = f"{params.target:.0%}"

    def recommend(self, state: HpaState, obs: Observation) -> Recommendation:
        p = self.params
        n = obs.vcpus
        now = obs.time
        utilisation = obs.utilisation
        if abs(utilisation / p.target - 1) <= p.tolerance:
            rec = n
        else:
            rec = math.ceil(obs.used_cores / p.target - 1e-9)
            rec = rec if rec > 1 else 1
        history = state.history
        history.append((now, rec))
        horizon = now - self._longest_window_s
        while history and history[0][0] < horizon:
            history.popleft()
        up_rec, down_rec = _window_extremes(history, now - p.up_window_s, now - p.down_window_s)
        target = up_rec if n < up_rec else down_rec if n > down_rec else n
        limit = n + p.up_limit_vcpus
        grown = math.floor(n * self._up_factor)
        limit = grown if grown > limit else limit
        target = target if target < limit else limit
        return Recommendation(target, f"cpu {utilisation:.0%} vs target {self._target_pct}: {rec} vCPUs", "utilisation")
