"""The per-VM decision engine: policy, guard rails and the wait for an order to take effect. Pure.

The same engine runs in the live decider and in trace replay, so both make the same decisions on the same
observations. The policy sees every observation (its history stays whole); a new order is held back while
the last one is pending: until a sample shows its target, its result arrives, or it expires. The sizes an
actuator reported it allows the VM narrow the VM's range for ``ALLOWED_SIZES_TTL_S``, so an order it would
refuse is not repeated; after that they are asked again (the operator may have changed them).
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

import msgspec

from services.decider.guard import GuardRails, GuardState, apply_rails
from services.decider.policies.base import Observation, PolicyBase

ALLOWED_SIZES_TTL_S = 600.0


class AllowedSizes(msgspec.Struct, frozen=True):
    """The sizes an actuator allows a VM, as its last result said, and until when to believe it."""

    min_vcpus: int
    max_vcpus: int
    until: float


class Decision(NamedTuple):
    target: int
    reason: str
    kind: str = "hold"


class Snapshot(msgspec.Struct, frozen=True):
    """A VM's decision state (msgpack: it keeps infinities), for a decider instance that takes the VM over."""

    policy: str
    policy_state: msgspec.Raw
    guard: GuardState
    last_time: float
    pending_target: int | None
    pending_until: float
    allowed: AllowedSizes | None = None


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, deque):  # policies keep bounded histories in deques
        return list(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _dec_hook(kind: type, obj: Any) -> Any:
    if getattr(kind, "__origin__", kind) is deque:
        return deque(obj)
    raise NotImplementedError(f"cannot decode {kind}")


_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)


class VmEngine:
    __slots__ = ("allowed", "guard", "last_time", "pending_target", "pending_until", "policy", "policy_state",
                 "rails")

    def __init__(self, policy: PolicyBase[Any, Any], rails: GuardRails) -> None:
        self.policy = policy
        self.rails = rails
        self.policy_state = policy.new_state()
        self.guard = GuardState()
        self.last_time = float("-inf")
        self.pending_target: int | None = None
        self.pending_until = float("-inf")
        self.allowed: AllowedSizes | None = None

    def step(self, obs: Observation) -> Decision | None:
        """The order to give after this observation, if any. Late or repeated observations are ignored."""
        if obs.time <= self.last_time:
            return None
        self.last_time = obs.time
        obs = self._within_allowed(obs)
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

    def _within_allowed(self, obs: Observation) -> Observation:
        allowed = self.allowed
        if allowed is None or obs.time >= allowed.until:
            return obs
        low, high = max(obs.min_vcpus, allowed.min_vcpus), min(obs.max_vcpus, allowed.max_vcpus)
        if low > high:
            return obs  # the hypervisor's range has moved away from what the actuator said: trust the sample
        return msgspec.structs.replace(obs, min_vcpus=low, max_vcpus=high)

    def learn_allowed(self, min_vcpus: int, max_vcpus: int, now: float) -> None:
        """An actuator's result said which sizes it allows this VM."""
        self.allowed = AllowedSizes(min_vcpus, max_vcpus, now + ALLOWED_SIZES_TTL_S)

    def mark_sent(self, target: int, until: float) -> None:
        self.pending_target = target
        self.pending_until = until

    def mark_done(self) -> None:
        self.pending_target = None

    def snapshot(self) -> bytes:
        policy_state = msgspec.msgpack.encode(self.policy_state, enc_hook=_enc_hook)
        return msgspec.msgpack.encode(Snapshot(self.policy.name, msgspec.Raw(policy_state), self.guard, self.last_time,
                                            self.pending_target, self.pending_until, self.allowed),
                                   enc_hook=_enc_hook)

    def restore(self, data: bytes) -> bool:
        """Take over a snapshot of the same policy; False (and nothing changed) if it does not fit."""
        try:
            snap = _snapshot_decoder.decode(data)
            if snap.policy != self.policy.name:
                return False
            state = msgspec.msgpack.decode(snap.policy_state, type=self.policy.state_type, dec_hook=_dec_hook)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        self.policy_state = state
        self.guard = snap.guard
        self.last_time = snap.last_time
        self.pending_target = snap.pending_target
        self.pending_until = snap.pending_until
        self.allowed = snap.allowed
        return True
