"""The per-VM decision engine: policy, guard rails, the wait for an order to take effect, and holds. Pure.

The same engine runs in the live decider and in trace replay, so both make the same decisions on the same
observations. The policy sees every observation (its history stays whole); a new order is held back while
the last one is pending: until a sample shows its target, its result arrives, or it expires. The sizes an
actuator reported it allows the VM narrow the VM's range for ``ALLOWED_SIZES_TTL_S``, so an order it would
refuse is not repeated; after that they are asked again (the operator may have changed them).

Results teach the engine three more things (``learn_result``; replay has no results and needs none):

* a refusal holds the VM as long as ``refusals.hold_for`` says (the actuator's ``retry_after``, and at least the
  decider's own minimum per error code), so no order is repeated faster than its refusal allows;
* the actuator's advertised rate limit, which the guard's change budget keeps within from then on;
* whether a sent order changed anything: if not, it no longer counts against the change budget.

An urgent sample (sent at once on a pressure trigger, between the regular ones) moves the policy's state as any
sample does, and a grow the policy proposes on it goes out at once where the rails allow (nothing pending, the change
budget, no refusal hold or pause). A shrink is never ordered on one, the host's reclaims included: an urgent sample
says the VM is short of CPU now, and shrinks keep their evidence window and calm for the regular samples, the next
of which comes within an interval.

``step`` returns no decision while a VM is held (by a refusal, an operator's pause, its warm-up, its change
budget or a full host) and says why in ``held``, for the decider's ``hotplug_decider_held_total``. A paused VM
keeps its whole decision state: the policy sees every observation, and only the order is withheld.

For a host planned as a whole, ``step`` runs in two phases, so that the host's plan (``services.decider.pool``)
sees what the policy wants before the order is made: ``propose`` (the policy's recommendation: what the VM wants
and needs) and ``decide`` (the host's ``Limit``, then the refusal holds and the rails). ``step`` is both at once;
without a limit its decisions are exactly those of the one phase it replaces. A reclaim a limit asks for is a
shrink like any other (warm-up, change budget, the pending order), except that a preemptible VM's is not held by
its warm-up.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, NamedTuple

import msgspec

from services.decider import refusals
from services.decider.guard import Change, GuardRails, GuardState, apply_rails, budgets
from services.decider.policies.base import Observation, PolicyBase, Recommendation
from services.decider.refusals import Hold
from shared.messages import ErrorCode, Resource, ScaleResult

ALLOWED_SIZES_TTL_S = 600.0
# Rail kinds that withhold an order the policy wanted, counted as held (cooldowns are the policy's own pace).
HELD_KINDS = ("warmup", "change-budget")


class AllowedSizes(msgspec.Struct, frozen=True):
    """The sizes an actuator allows a VM, as its last result said, and until when to believe it."""

    min_vcpus: int
    max_vcpus: int
    until: float


class Decision(NamedTuple):
    target: int  # vCPUs, or bytes for a memory order
    reason: str
    kind: str = "hold"
    resource: Resource = Resource.VCPU


class Proposal(msgspec.Struct, frozen=True, gc=False):
    """What the policy wants after one observation (``VmEngine.propose``), before the host's limit and the rails.
    ``obs`` is within the sizes the actuator allows."""

    obs: Observation
    rec: Recommendation
    # In its warm-up (``GuardRails.warmup_s``): the rails keep what it has whatever it wants (unless it is preempted).
    warming: bool = False

    @property
    def want(self) -> int:
        """The size the policy wants, within the VM's range."""
        return _clamped(self.obs, self.rec.target)

    @property
    def need(self) -> int:
        """The part of ``want`` the demand seen now needs (the rest is insurance), within the VM's range."""
        want = self.want
        need = self.rec.need
        return want if need is None else max(self.obs.min_vcpus, min(want, need))


class Limit(NamedTuple):
    """What the VM's host allows it now (``services.decider.pool``): at most ``vcpus`` (below its size: a reclaim,
    even if the policy wants less still). ``reason`` says why, for the order's reason; a ``preempt`` reclaim is not
    held by the VM's warm-up."""

    vcpus: int
    reason: str
    preempt: bool = False


class Held(NamedTuple):
    """Why the last step gave no order although the policy wanted one: ``label`` is an error code, "warmup" or
    "change-budget" (the metric's label); ``reason`` is for people."""

    label: str
    reason: str


class Snapshot(msgspec.Struct, frozen=True):
    """A VM's decision state (msgpack: it keeps infinities), for a decider instance that takes the VM over.
    Fields added later have defaults, so snapshots of older deciders still decode."""

    policy: str
    policy_state: msgspec.Raw
    guard: GuardState
    last_time: float
    pending_target: int | None
    pending_until: float
    allowed: AllowedSizes | None = None
    holds: list[Hold] = msgspec.field(default_factory=list)
    backoff_streak: int = 0
    pending_id: str = ""


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, deque):  # policies keep bounded histories in deques
        return list(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _dec_hook(kind: type, obj: Any) -> Any:
    if getattr(kind, "__origin__", kind) is deque:
        items = getattr(kind, "__args__", None)
        # Typed items (tuples come back from msgpack as lists) are converted as the annotation says.
        return deque(msgspec.convert(obj, list[items[0]], dec_hook=_dec_hook) if items else obj)  # type: ignore[valid-type]
    raise NotImplementedError(f"cannot decode {kind}")


_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)


def _clamped(obs: Observation, wanted: int) -> int:
    """The size an order towards ``wanted`` would ask for, within the VM's range."""
    return max(obs.min_vcpus, min(obs.max_vcpus, wanted))


class VmEngine:
    __slots__ = (
        "allowed",
        "backoff_streak",
        "guard",
        "held",
        "holds",
        "last_time",
        "pending_id",
        "pending_target",
        "pending_until",
        "policy",
        "policy_state",
        "rails",
    )

    def __init__(self, policy: PolicyBase[Any, Any], rails: GuardRails) -> None:
        self.policy = policy
        self.rails = rails
        self.policy_state = policy.new_state()
        self.guard = GuardState()
        self.last_time = float("-inf")
        self.pending_target: int | None = None
        self.pending_until = float("-inf")
        self.pending_id = ""
        self.allowed: AllowedSizes | None = None
        self.holds: list[Hold] = []
        # Back-off refusals in a row (guest-refused, timeouts...) since the VM last took a change.
        self.backoff_streak = 0
        self.held: Held | None = None

    def step(self, obs: Observation, paused: str | None = None, limit: Limit | None = None) -> Decision | None:
        """The order to give after this observation, if any. Late or repeated observations are ignored.
        ``paused``: the VM is paused by an operator (the text says by whom, until when and why): no order.
        ``limit``: what the VM's host allows it (None: as much as its range)."""
        seen = self._seen(obs)
        if seen is None:
            return None
        rec = self.policy.recommend(self.policy_state, seen)
        if limit is None and self.pending_target is None:
            # decide's first answer for most samples, without its call (nor the proposal's): nothing to change. A target
            # of the vCPUs the VM has, within its range (nearly every sample), is that size without _clamped's call.
            n, target = seen.vcpus, rec.target
            if (target == n and seen.min_vcpus <= n <= seen.max_vcpus) or _clamped(seen, target) == n:
                return None
        return self.decide(Proposal(seen, rec, self._warming(seen)), paused, limit)

    def propose(self, obs: Observation) -> Proposal | None:
        """The policy's recommendation after this observation (its state moves on); None for a late or repeated
        observation, which is ignored. Follow it with ``decide``."""
        seen = self._seen(obs)
        if seen is None:
            return None
        return Proposal(seen, self.policy.recommend(self.policy_state, seen), self._warming(seen))

    def _seen(self, obs: Observation) -> Observation | None:
        """The observation as the policy is to see it (within the sizes the actuator allows), with the pending order
        settled by it; None for a late or repeated one."""
        self.held = None
        if obs.time <= self.last_time:
            return None
        self.last_time = obs.time
        if self.guard.first_seen is None:
            self.guard.first_seen = obs.time  # warm-up runs from here
        if self.allowed is not None:
            obs = self._within_allowed(obs)
        if self.pending_target is not None:
            if obs.vcpus == self.pending_target:
                self._took_effect(self.pending_id, obs.time)  # at the latest now
                self.pending_target = None
            elif obs.time >= self.pending_until:
                # expired: had it run, it would have started before its expiry
                self._took_effect(self.pending_id, self.pending_until)
                self.pending_target = None
        return obs

    def _warming(self, obs: Observation) -> bool:
        """In its warm-up (``GuardRails.warmup_s``), counted from the first observation ``_seen``."""
        first_seen = self.guard.first_seen
        return first_seen is not None and obs.time - first_seen < self.rails.warmup_s

    def decide(self, proposal: Proposal, paused: str | None = None, limit: Limit | None = None) -> Decision | None:
        """The order to give for ``proposal`` (see ``step``), within ``limit``."""
        obs, rec = proposal.obs, proposal.rec
        if self.pending_target is not None:
            return None
        if limit is None and _clamped(obs, rec.target) == obs.vcpus:
            return None  # nothing to change: no pause, hold or rail has anything to withhold (most samples)
        warm = True
        if limit is not None and (limit.vcpus < proposal.want or limit.vcpus < obs.vcpus):
            n, target = obs.vcpus, max(obs.min_vcpus, limit.vcpus)
            kind = "host-full" if target >= n else "preempt" if limit.preempt else "reclaim"
            warm = not (limit.preempt and target < n)
            rec = Recommendation(target, f"{rec.reason}; {limit.reason}", kind, rec.need)
        if obs.urgent and _clamped(obs, rec.target) < obs.vcpus:
            return None  # grows only: the next regular sample may shrink (not counted as held: nothing waits on it)
        if paused is not None and _clamped(obs, rec.target) != obs.vcpus:
            self.held = Held(ErrorCode.PAUSED.value, paused)
            return None
        hold = self._holding(obs, rec.target)
        if hold is not None:
            wait = f"{hold.until - obs.time:.0f} s more" if obs.time < hold.until else "a newer sample"
            self.held = Held(hold.code, f"{rec.reason}; held after {hold.code}: {wait}")
            return None
        rec = apply_rails(self.rails, self.guard, obs, rec, warm=warm)
        if rec.target == obs.vcpus:
            if rec.kind in HELD_KINDS:
                self.held = Held(rec.kind, rec.reason)
            elif rec.kind == "host-full" and proposal.want > obs.vcpus:
                self.held = Held(ErrorCode.HOST_FULL.value, rec.reason)  # the grow waits for room
            return None
        return Decision(rec.target, rec.reason, rec.kind)

    def _holding(self, obs: Observation, wanted: int) -> Hold | None:
        """The refusal hold that stops an order towards ``wanted`` now, if any; holds that are over are dropped."""
        if not self.holds:
            return None
        self.holds = [h for h in self.holds if not h.over(obs.time)]
        target = _clamped(obs, wanted)
        if target == obs.vcpus:
            return None
        direction = 1 if target > obs.vcpus else -1
        return next((h for h in self.holds if h.holds(obs.time, direction)), None)

    def lift_holds(self, code: ErrorCode) -> None:
        """Drop the refusal holds of ``code``: what caused them is over (a paused VM was resumed)."""
        self.holds = [h for h in self.holds if h.code != code.value]

    def _within_allowed(self, obs: Observation) -> Observation:
        allowed = self.allowed
        if allowed is None or obs.time >= allowed.until:
            return obs
        low, high = max(obs.min_vcpus, allowed.min_vcpus), min(obs.max_vcpus, allowed.max_vcpus)
        if low > high:
            return obs  # the hypervisor's range has moved away from what the actuator said: trust the sample
        return msgspec.structs.replace(obs, min_vcpus=low, max_vcpus=high)

    def _took_effect(self, command_id: str, at: float) -> None:
        """The change of ``command_id`` happened by ``at``: count it from then (the actuator counts it from when
        it ran, which may be later than when it was sent)."""
        if not math.isfinite(at):
            return
        # The newest one only: in replay every change has the id "".
        for change in reversed(self.guard.changes):
            if change.command_id == command_id:
                change.time = max(change.time, at)
                return

    def learn_allowed(self, min_vcpus: int, max_vcpus: int, now: float) -> None:
        """An actuator's result said which sizes it allows this VM."""
        self.allowed = AllowedSizes(min_vcpus, max_vcpus, now + ALLOWED_SIZES_TTL_S)

    def learn_result(self, result: ScaleResult, now: float) -> Hold | None:
        """What an actuator's result for this VM teaches: allowed sizes, its rate limit, whether the order changed
        anything, and how long to hold the VM after a refusal (the hold it set, if any, is returned)."""
        if result.allowed_min_vcpus is not None and result.allowed_max_vcpus is not None:
            self.learn_allowed(result.allowed_min_vcpus, result.allowed_max_vcpus, now)
        if result.rate_limit_changes is not None and result.rate_limit_window_s is not None:
            self.guard.actuator_max_changes = result.rate_limit_changes
            self.guard.actuator_window_s = result.rate_limit_window_s
        changed = (
            result.vcpus_before is not None
            and result.vcpus_after is not None
            and (result.vcpus_before != result.vcpus_after)
        )
        known = any(c.command_id == result.command_id for c in self.guard.changes)
        if changed:
            if known:
                self._took_effect(result.command_id, result.time)
            else:  # another decider's, or sent before a restart: the actuator counts it all the same
                self.guard.changes.append(Change(result.time, result.command_id))
        elif known:
            self._forget_change(result.command_id)
        if result.ok:
            if changed:
                self.backoff_streak = 0
            return None
        if result.error_code in refusals.BACKOFF_CODES:
            self.backoff_streak += 1
        hold = refusals.hold_for(result, self.backoff_streak)
        if hold is not None:
            self.holds.append(hold)
        if not self.pending_id or result.command_id == self.pending_id:
            self.pending_target = None  # a failed order leaves the VM as it was: free to order again
        return hold

    def mark_sent(self, target: int, until: float, command_id: str = "", time: float | None = None) -> None:
        """An order for ``target`` went out (at ``time``, by default the last observation's): pending until
        ``until``, and one change against the budget until its result says it changed nothing."""
        sent_at = self.last_time if time is None else time
        self.pending_target = target
        self.pending_until = until
        self.pending_id = command_id
        longest = max(window for _, window in budgets(self.rails, self.guard))
        self.guard.changes = [c for c in self.guard.changes if sent_at - c.time < longest]
        self.guard.changes.append(Change(sent_at, command_id))

    def mark_done(self) -> None:
        self.pending_target = None

    def switch_policy(self, policy: PolicyBase[Any, Any], rails: GuardRails) -> None:
        """Run another policy from now on: its memory and the warm-up start afresh, while the order in flight,
        the holds after refusals and the change budget stay, so a switch never lets an order out sooner."""
        self.policy = policy
        self.rails = rails
        self.policy_state = policy.new_state()
        self.guard.first_seen = None

    def unsent(self, command_id: str) -> None:
        """The order could not be stored, so it will never run: not pending, and no change against the budget."""
        if command_id == self.pending_id:
            self.pending_target = None
        self._forget_change(command_id)

    def _forget_change(self, command_id: str) -> None:
        if command_id:
            self.guard.changes = [c for c in self.guard.changes if c.command_id != command_id]

    def snapshot(self) -> bytes:
        policy_state = msgspec.msgpack.encode(self.policy_state, enc_hook=_enc_hook)
        return msgspec.msgpack.encode(
            Snapshot(
                self.policy.name,
                msgspec.Raw(policy_state),
                self.guard,
                self.last_time,
                self.pending_target,
                self.pending_until,
                self.allowed,
                self.holds,
                self.backoff_streak,
                self.pending_id,
            ),
            enc_hook=_enc_hook,
        )

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
        self.holds = list(snap.holds)
        self.backoff_streak = snap.backoff_streak
        self.pending_id = snap.pending_id
        return True
