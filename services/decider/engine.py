"""The per-VM decision engine: policy, guard rails and the wait for an order to take effect. Pure.

The same engine runs in the live decider and in trace replay, so both make the same decisions on the same
observations. The policy sees every observation (its history stays whole); a new order is held back while
the last one is pending: until a sample shows its target, its result arrives, or it expires.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from services.decider.guard import GuardRails, GuardState, apply_rails
from services.decider.policies.base import Observation, PolicyBase


class Decision(NamedTuple):
    target: int
    reason: str
    kind: str = "hold"


class VmEngine:
    __slots__ = ("guard", "last_time", "pending_target", "pending_until", "policy", "policy_state", "rails")

    def __init__(self, policy: PolicyBase[Any, Any], rails: GuardRails) -> None:
        self.policy = policy
        self.rails = rails
        self.policy_state = policy.new_state()
        self.guard = GuardState()
        self.last_time = float("-inf")
        self.pending_target: int | None = None
        self.pending_until = float("-inf")

    def step(self, obs: Observation) -> Decision | None:
        """The order to give after this observation, if any. Late or repeated observations are ignored."""
        if obs.time <= self.last_time:
            return None
        self.last_time = obs.time
        if self.pending_target is not None and (
            obs.vcpus == self.pending_target or obs.time >= self.pending_until
        ):
            self.pending_target = None
        rec = self.policy.recommend(self.policy_state, obs)
        if self.pending_target is not None:
            return None
        rec = apply_rails(self.rails, self.guard, obs, rec)
        if rec.target == obs.vcpus:
            return None
        return Decision(rec.target, rec.reason, rec.kind)

    def mark_sent(self, target: int, until: float) -> None:
        self.pending_target = target
        self.pending_until = until

    def mark_done(self) -> None:
        self.pending_target = None
