"""How long the decider holds a VM after a refused order, so that no order is repeated faster than its refusal
allows. Pure.

The actuator says when asking again makes sense (``ScaleResult.retry_after``); the decider holds the VM at least
that long, and at least its own minimum for the error code (``FLOORS``), so an older actuator that sends no
``retry_after``, or a third-party one, cannot make it repeat an order on every sample. Some holds also wait for a
sample newer than the result (the VM shown back, or its true size seen), and some hold only orders in the refused
direction (a guest that will not give up a vCPU may still take one). A ``paused`` refusal holds until the
actuator's ``retry_after`` (the pause's end, at most 10 minutes) and at least ``POLL_S``; the decider also lifts
it at once when it sees the VM resumed (it watches the pause bucket, ``shared.pause_bucket``).
"""

from __future__ import annotations

import msgspec

from shared.messages import ErrorCode, Resource, ScaleResult

BACKOFF_START_S = 30.0
BACKOFF_MAX_S = 600.0
POLL_S = 10.0
LONG_S = 600.0
# When an actuator refuses as rate-limited without saying when its window frees, nor how long it is.
DEFAULT_RATE_WINDOW_S = 60.0
# When an out-of-bounds refusal names no allowed sizes, the engine cannot keep its next order inside them.
UNNAMED_BOUNDS_S = 60.0

# Failures of the operation itself, which may well fail again: back off, doubling per failure in a row.
BACKOFF_CODES = frozenset(
    {
        ErrorCode.GUEST_REFUSED,
        ErrorCode.TIMEOUT,
        ErrorCode.UNKNOWN,
        ErrorCode.NOT_VERIFIED,
        ErrorCode.ALREADY_ATTACHED,
        ErrorCode.NOT_ATTACHED,
        # Pinned pages kept a memory device from going lower; Linux's virtio-mem retries after 50 s itself.
        ErrorCode.PARTIAL,
    }
)
# What only an operator changes: the VM's configuration, a hypervisor limit, a misrouted command.
LONG_CODES = frozenset(
    {
        ErrorCode.HOTPLUG_DISABLED,
        ErrorCode.HOTPLUG_BUDGET,
        ErrorCode.CPU_ID_OUT_OF_RANGE,
        ErrorCode.CPU0,
        ErrorCode.WRONG_HOST,
    }
)
# The VM was gone or not running, or the decider's view of it stale: wait for a sample newer than the result.
NEEDS_NEWER_SAMPLE = frozenset({ErrorCode.VM_NOT_FOUND, ErrorCode.VM_NOT_RUNNING, ErrorCode.STALE_VIEW})
# Refusals that say something about one direction only (plugging, or unplugging); others hold any order.
ONE_DIRECTION = frozenset(
    {
        ErrorCode.GUEST_REFUSED,
        ErrorCode.CPU0,
        ErrorCode.NOT_ATTACHED,
        ErrorCode.CPU_ID_OUT_OF_RANGE,
        ErrorCode.HOTPLUG_BUDGET,
        ErrorCode.ALREADY_ATTACHED,
        ErrorCode.OUT_OF_BOUNDS,
        ErrorCode.HOST_FULL,  # a full host holds grows only: a shrink frees room
        ErrorCode.BELOW_USED,  # a shrink below what the guest uses holds shrinks only
        ErrorCode.PARTIAL,  # the device could give back no more for now: holds shrinks
    }
)

# The decider's own minimum hold per code, in seconds, whatever the result says (back-off codes: see backoff_s).
FLOORS: dict[ErrorCode, float] = {
    ErrorCode.EXPIRED: 0.0,  # the actuator was late, not the VM: a fresh order may go at once
    ErrorCode.STALE_VIEW: 0.0,  # ... once a newer sample shows the VM's real size
    ErrorCode.SUPERSEDED: 0.0,  # a newer order was already there
    ErrorCode.STALE_TERM: 0.0,  # this decider is no longer the leader; the lease stops it, not a hold
    ErrorCode.OUT_OF_BOUNDS: 0.0,  # the allowed sizes in the result keep the next order inside them
    ErrorCode.RATE_LIMITED: 1.0,  # the window frees when retry_after says; never sooner than a second
    ErrorCode.VM_NOT_FOUND: POLL_S,
    ErrorCode.VM_NOT_RUNNING: POLL_S,
    ErrorCode.PAUSED: POLL_S,  # an operator paused the VM; a resume, seen in the bucket, lifts the hold sooner
    # The host had no room: ask again when the actuator says (neon's denied upscale is re-asked after 2 s); the
    # decider's own host plan (services.decider.pool) keeps it from asking while it knows there is none.
    ErrorCode.HOST_FULL: 2.0,
    # Memory: the guest used more than the shrink would leave it; its use changes at sample pace.
    ErrorCode.BELOW_USED: POLL_S,
    **{code: LONG_S for code in LONG_CODES},
    **{code: BACKOFF_START_S for code in BACKOFF_CODES},
}
assert set(FLOORS) == set(ErrorCode), "every error code needs a minimum hold"


class Hold(msgspec.Struct, frozen=True):
    """A VM held after a refusal: no order (in ``direction``, or any when 0) before ``until``, nor before a sample
    newer than ``after_sample`` when that is set."""

    code: str
    until: float
    after_sample: float | None = None
    direction: int = 0

    def holds(self, time: float, direction: int) -> bool:
        if self.direction and direction != self.direction:
            return False
        return time < self.until or (self.after_sample is not None and time <= self.after_sample)

    def over(self, time: float) -> bool:
        return time >= self.until and (self.after_sample is None or time > self.after_sample)


def backoff_s(streak: int) -> float:
    """The decider's own back-off after ``streak`` back-off failures in a row: 30, 60, 120, ... s, at most 600."""
    return min(BACKOFF_MAX_S, BACKOFF_START_S * 2.0 ** min(max(streak, 1) - 1, 32))


def hold_s(result: ScaleResult, streak: int) -> float:
    """Seconds after ``result.time`` to hold the VM. ``streak`` counts back-off failures in a row, this one
    included."""
    code = result.error_code
    assert code is not None
    floor = backoff_s(streak) if code in BACKOFF_CODES else FLOORS[code]
    advertised = result.retry_after
    if advertised is None:  # an actuator that does not say: the decider's own estimate
        if code is ErrorCode.RATE_LIMITED:
            advertised = result.rate_limit_window_s or DEFAULT_RATE_WINDOW_S
        elif code is ErrorCode.OUT_OF_BOUNDS and result.allowed_max_vcpus is None:
            advertised = UNNAMED_BOUNDS_S
        else:
            advertised = 0.0
    return max(floor, advertised)


def _sizes(result: ScaleResult) -> tuple[int | None, int | None]:
    """The result's size before and its target, in the unit of the resource it changed."""
    if result.resource is Resource.MEMORY:
        return result.memory_before_bytes, result.target_memory_bytes
    return result.vcpus_before, result.target_vcpus


def hold_for(result: ScaleResult, streak: int) -> Hold | None:
    """The hold a refused order calls for, or None when a new order may go at once."""
    if result.ok or result.error_code is None:
        return None
    code = result.error_code
    wait = hold_s(result, streak)
    after = result.time if code in NEEDS_NEWER_SAMPLE else None
    if wait <= 0 and after is None:
        return None
    direction = 0
    before, target = _sizes(result)
    if code in ONE_DIRECTION and before is not None and target is not None and target != before:
        direction = 1 if target > before else -1
    return Hold(code.value, result.time + wait, after, direction)
