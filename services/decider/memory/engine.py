"""One VM's memory orders in the live decider: the memory rule, the order in flight, and the holds after refusals.
Pure, as the vCPU engine (``services.decider.engine``) is, and apart from it: memory and vCPUs are two lanes of one VM
on the actuator (its own rate limit and back-off per lane), so a memory refusal holds memory orders only.

The rule sees every sample (its window of use stays whole); an order is held back while the last one is in flight:
until a sample shows its target (within the device's step), its result arrives, or it expires. A refusal holds the
VM's memory orders as ``refusals.hold_for`` says (``below-used`` shrinks for a poll, ``partial`` with a back-off).
"""

from __future__ import annotations

import math

from services.decider import refusals
from services.decider.engine import Decision, Held
from services.decider.memory.policy import DEFAULT_STEP_BYTES, MemoryObservation, MemoryPolicy, MemoryState
from services.decider.refusals import Hold
from shared.messages import ErrorCode, MemoryReading, Resource, ScaleResult


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

    def step(self, time: float, memory: MemoryReading, interval_s: float, paused: str | None = None) -> Decision | None:
        """The memory order to give after the sample at ``time``, if any; late or repeated samples are ignored.
        ``paused``: an operator paused the VM (no order; the rule still sees the sample)."""
        self.held = None
        if time <= self.last_time:
            return None
        self.last_time = time
        if self.pending_target is not None and (
            abs(memory.size_bytes - self.pending_target) < DEFAULT_STEP_BYTES or time >= self.pending_until
        ):
            self.pending_target = None
        decision = self.policy.decide(self.state, self._observation(time, memory, interval_s))
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

    def _observation(self, time: float, memory: MemoryReading, interval_s: float) -> MemoryObservation:
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

    def lift_holds(self, code: ErrorCode) -> None:
        self.holds = [h for h in self.holds if h.code != code.value]
