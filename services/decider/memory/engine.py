"""One VM's memory orders in the live decider: the memory rule, the order in flight, and the holds after refusals.
Pure, as the vCPU engine (``services.decider.engine``) is, and apart from it: memory and vCPUs are two lanes of one VM
on the actuator (its own rate limit and back-off per lane), so a memory refusal holds memory orders only.

The rule sees every sample (its window of use stays whole); an order is held back while the last one is in flight:
until a sample shows its target (within the device's step), its result arrives, or it expires. A refusal holds the
VM's memory orders as ``refusals.hold_for`` says (``below-used`` shrinks for a poll, ``partial`` with a back-off).

``snapshot``/``restore`` carry the whole state (the rule's windows, the order in flight, the holds) to the decider
instance that takes the VM over in a sharded group, as ``VmEngine``'s do for vCPUs: the new owner does not wait a
fresh window of evidence, nor forget a rise or a refusal.
"""

from __future__ import annotations

import math

import msgspec

from services.decider import refusals
from services.decider.engine import Decision, Held
from services.decider.memory.policy import (
    DEFAULT_STEP_BYTES,
    WINDOW_BUCKETS,
    MemoryObservation,
    MemoryPolicy,
    MemoryState,
)
from services.decider.refusals import Hold
from shared.messages import ErrorCode, MemoryReading, Resource, ScaleResult


class MemorySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A VM's memory decision state (msgpack: it keeps infinities). Fields added later get defaults."""

    window_span_s: float
    window_times: list[float]
    window_values: list[int]
    rise_times: list[float]
    rise_values: list[int]
    calm_since: float | None
    last_change: float
    rule_last_time: float | None
    last_used: int | None
    last_time: float
    pending_target: int | None
    pending_until: float
    pending_id: str
    holds: list[Hold]
    backoff_streak: int
    interval_s: float | None = None
    used_since: float | None = None


_snapshot_decoder = msgspec.msgpack.Decoder(MemorySnapshot)


class MemoryEngine:
    __slots__ = (
        "backoff_streak",
        "bounds",
        "held",
        "holds",
        "last_time",
        "pending_id",
        "pending_target",
        "pending_until",
        "policy",
        "state",
    )

    def __init__(self, policy: MemoryPolicy, bounds: tuple[int | None, int | None] = (None, None)) -> None:
        self.policy = policy
        self.state: MemoryState = policy.new_state()
        self.bounds = bounds  # the VM's own memory bounds (its [[vm]] rule's min_memory, max_memory), in bytes
        self.last_time = -math.inf
        self.pending_target: int | None = None
        self.pending_until = -math.inf
        self.pending_id = ""
        self.holds: list[Hold] = []
        self.backoff_streak = 0
        self.held: Held | None = None

    def step(
        self, time: float, memory: MemoryReading, interval_s: float, paused: str | None = None, *, urgent: bool = False
    ) -> Decision | None:
        """The memory order to give after the sample at ``time``, if any; late or repeated samples are ignored.
        ``paused``: an operator paused the VM (no order; the rule still sees the sample). ``urgent``: a sample sent
        at once on a pressure trigger, on which no shrink is ordered (as for vCPUs: shrinks wait for the regular
        samples; the rule still sees it)."""
        self.held = None
        if time <= self.last_time:
            return None
        self.last_time = time
        if self.pending_target is not None and (
            abs(memory.size_bytes - self.pending_target) < DEFAULT_STEP_BYTES or time >= self.pending_until
        ):
            self.pending_target = None
        decision = self.policy.decide(self.state, self._observation(time, memory, interval_s, urgent))
        if decision is None or self.pending_target is not None:
            return None
        if paused is not None:
            self.held = Held(ErrorCode.PAUSED.value, paused)
            return None
        direction = 1 if decision.target_bytes > memory.size_bytes else -1
        self.holds = [h for h in self.holds if not h.over(time)]
        hold = next((h for h in self.holds if h.holds(time, direction)), None)
        if hold is not None:
            wait = f"{hold.until - time:.0f} s more" if time < hold.until else "a newer sample"
            self.held = Held(hold.code, f"{decision.reason}; held after {hold.code}: {wait}")
            return None
        return Decision(decision.target_bytes, decision.reason, decision.kind, Resource.MEMORY)

    def _observation(self, time: float, memory: MemoryReading, interval_s: float, urgent: bool) -> MemoryObservation:
        low, high = self.bounds
        return MemoryObservation(
            time=time,
            size_bytes=memory.size_bytes,
            used_bytes=memory.used_bytes,
            min_bytes=max(memory.min_bytes, low or 0),
            max_bytes=memory.max_bytes if high is None else max(min(memory.max_bytes, high), memory.min_bytes),
            available_bytes=memory.available_bytes,
            swap_in_bytes_per_s=memory.swap_in_bytes_per_s,
            psi_some=memory.psi_some,
            interval_s=interval_s,
            urgent=urgent,
        )

    def mark_sent(self, target: int, until: float, command_id: str = "", time: float | None = None) -> None:
        """An order for ``target`` bytes went out: in flight until ``until``."""
        self.pending_target, self.pending_until, self.pending_id = target, until, command_id

    def unsent(self, command_id: str) -> None:
        """The order could not be stored, so it will never run."""
        if command_id == self.pending_id:
            self.pending_target = None

    def learn_result(self, result: ScaleResult) -> Hold | None:
        """What a memory result teaches: a refusal's hold (returned), and that the order is no longer in flight."""
        if result.command_id == self.pending_id or not self.pending_id:
            self.pending_target = None
        if result.ok:
            moved = result.memory_before_bytes != result.memory_after_bytes
            self.backoff_streak = 0 if moved else self.backoff_streak
            return None
        if result.error_code in refusals.BACKOFF_CODES:
            self.backoff_streak += 1
        hold = refusals.hold_for(result, self.backoff_streak)
        if hold is not None:
            self.holds.append(hold)
        return hold

    def snapshot(self) -> bytes:
        state = self.state
        window_times, window_values = state.window.entries()
        rise_times, rise_values = state.rises.entries()
        return msgspec.msgpack.encode(
            MemorySnapshot(
                window_span_s=state.window.span_s,
                window_times=window_times,
                window_values=window_values,
                rise_times=rise_times,
                rise_values=rise_values,
                calm_since=state.calm_since,
                last_change=state.last_change,
                rule_last_time=state.last_time,
                last_used=state.last_used,
                last_time=self.last_time,
                pending_target=self.pending_target,
                pending_until=self.pending_until,
                pending_id=self.pending_id,
                holds=self.holds,
                backoff_streak=self.backoff_streak,
                interval_s=state.interval_s,
                used_since=state.used_since,
            )
        )

    def restore(self, data: bytes) -> bool:
        """Take over a snapshot; False (and nothing changed) if it does not decode."""
        try:
            snap = _snapshot_decoder.decode(data)
            state = self.policy.new_state()
            state.window.span_s, state.window.resolution_s = snap.window_span_s, snap.window_span_s / WINDOW_BUCKETS
            state.window.load(snap.window_times, snap.window_values)
            state.rises.load(snap.rise_times, snap.rise_values)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            return False
        state.calm_since, state.last_change = snap.calm_since, snap.last_change
        state.last_time, state.last_used = snap.rule_last_time, snap.last_used
        state.interval_s = snap.interval_s
        # An older snapshot's last_used is its last sample's (rule_last_time): measure the next rise from there.
        state.used_since = snap.used_since if snap.used_since is not None else snap.rule_last_time
        self.state = state
        self.last_time = snap.last_time
        self.pending_target, self.pending_until = snap.pending_target, snap.pending_until
        self.pending_id = snap.pending_id
        self.holds = list(snap.holds)
        self.backoff_streak = snap.backoff_streak
        return True

    def lift_holds(self, code: ErrorCode) -> None:
        self.holds = [h for h in self.holds if h.code != code.value]
