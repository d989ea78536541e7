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


class HpaPolicy(PolicyBase[HpaParams, HpaState]):
    name = "hpa"
    SWEEP = ("target", (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95))
    params_type = HpaParams
    state_type = HpaState

    def recommend(self, state: HpaState, obs: Observation) -> Recommendation:
        p = self.params
        n = obs.vcpus
        ratio = obs.utilisation / p.target
        rec = n if abs(ratio - 1) <= p.tolerance else max(1, math.ceil(obs.used_cores / p.target - 1e-9))
        history = state.history
        history.append((obs.time, rec))
        horizon = obs.time - max(p.up_window_s, p.down_window_s)
        while history and history[0][0] < horizon:
            history.popleft()
        up_rec = min(r for t, r in history if t >= obs.time - p.up_window_s)
        down_rec = max(r for t, r in history if t >= obs.time - p.down_window_s)
        target = up_rec if n < up_rec else down_rec if n > down_rec else n
        limit = max(n + p.up_limit_vcpus, math.floor(n * (1 + p.up_limit_pct / 100)))
        target = min(target, limit)
        return Recommendation(target, f"cpu {obs.utilisation:.0%} vs target {p.target:.0%}: {rec} vCPUs", "utilisation")
