"""What a refusal's ``retry_after`` advertises: when asking the same VM again makes sense. Pure.

Without it a decider repeats a refused order on its next sample (a denied resize retried every second is the
complaint of neon autoscaling #572). The rule per error code, in ``RULES``:

* ``NOW`` (0 s): nothing about the VM stands in the way of a fresh order: ``expired``, ``stale-view``,
  ``superseded``, ``stale-term``, and ``out-of-bounds`` (its result names the sizes allowed, inside which a
  decider keeps its next orders).
* ``RATE_WINDOW``: ``rate-limited``, when the oldest resize that fills the VM's window leaves it.
* ``BACKOFF``: the VM or its guest failed the operation and may well fail it again: ``guest-refused``,
  ``timeout``, ``unknown``, ``not-verified``, ``already-attached``, ``not-attached``, and ``partial`` (a memory
  device that stopped short: pinned pages; Linux's virtio-mem itself retries after 50 s). Per VM, from
  ``BACKOFF_START_S`` doubling at each such failure up to ``BACKOFF_MAX_S``; a successful change resets it.
* ``POLL`` (``POLL_S``): the VM is not there or not running: ``vm-not-found``, ``vm-not-running``. It may be back
  soon; deciders also wait for a sample newer than the result, which shows it back. Also ``below-used``: a memory
  shrink that would leave the guest less than it uses plus headroom; its use changes at sample pace.
* ``LONG`` (``LONG_S``): what only an operator changes (VM configuration, a hypervisor limit, a misrouted
  command): ``hotplug-disabled``, ``hotplug-budget-exhausted``, ``cpu-id-out-of-range``, ``cpu0``, ``wrong-host``.
* ``ROOM`` (``ROOM_S``): ``host-full``, the host had no room for the grow; cores may free at any moment (a shrink,
  a VM that stops), so deciders ask again soon, as neon's agents re-ask a denied upscale after 2 s.
* ``PAUSE``: ``paused``, when the pause ends, and at most ``LONG_S`` (an open-ended pause: ``LONG_S``), so a decider
  that does not watch the pause bucket still asks again within ``LONG_S`` of a resume.
"""

from __future__ import annotations

from enum import Enum

from shared.messages import ErrorCode

BACKOFF_START_S = 30.0
BACKOFF_MAX_S = 600.0
POLL_S = 10.0
LONG_S = 600.0
ROOM_S = 2.0


class Rule(Enum):
    NOW = "now"
    RATE_WINDOW = "rate-window"
    BACKOFF = "backoff"
    POLL = "poll"
    LONG = "long"
    PAUSE = "pause"
    ROOM = "room"


RULES: dict[ErrorCode, Rule] = {
    ErrorCode.EXPIRED: Rule.NOW,
    ErrorCode.STALE_VIEW: Rule.NOW,
    ErrorCode.SUPERSEDED: Rule.NOW,
    ErrorCode.STALE_TERM: Rule.NOW,
    ErrorCode.OUT_OF_BOUNDS: Rule.NOW,
    ErrorCode.RATE_LIMITED: Rule.RATE_WINDOW,
    ErrorCode.GUEST_REFUSED: Rule.BACKOFF,
    ErrorCode.TIMEOUT: Rule.BACKOFF,
    ErrorCode.UNKNOWN: Rule.BACKOFF,
    ErrorCode.NOT_VERIFIED: Rule.BACKOFF,
    ErrorCode.ALREADY_ATTACHED: Rule.BACKOFF,
    ErrorCode.NOT_ATTACHED: Rule.BACKOFF,
    ErrorCode.VM_NOT_FOUND: Rule.POLL,
    ErrorCode.VM_NOT_RUNNING: Rule.POLL,
    ErrorCode.HOTPLUG_DISABLED: Rule.LONG,
    ErrorCode.HOTPLUG_BUDGET: Rule.LONG,
    ErrorCode.CPU_ID_OUT_OF_RANGE: Rule.LONG,
    ErrorCode.CPU0: Rule.LONG,
    ErrorCode.WRONG_HOST: Rule.LONG,
    ErrorCode.PAUSED: Rule.PAUSE,
    ErrorCode.HOST_FULL: Rule.ROOM,
    ErrorCode.BELOW_USED: Rule.POLL,
    ErrorCode.PARTIAL: Rule.BACKOFF,
}


class Backoff:
    """Per VM: how many back-off failures in a row since its last successful change."""

    def __init__(self, start_s: float = BACKOFF_START_S, max_s: float = BACKOFF_MAX_S) -> None:
        self.start_s = start_s
        self.max_s = max_s
        self._streak: dict[str, int] = {}

    def failed(self, vm: str) -> float:
        """Count one more failure of ``vm``; the wait it calls for (30, 60, 120, ... s, at most ``max_s``)."""
        streak = self._streak.get(vm, 0) + 1
        self._streak[vm] = streak
        return min(self.max_s, self.start_s * 2.0 ** min(streak - 1, 32))

    def succeeded(self, vm: str) -> None:
        self._streak.pop(vm, None)


def retry_after(code: ErrorCode, vm: str, *, now: float, backoff: Backoff, retry_at: float | None = None) -> float:
    """Seconds after ``now`` (the result's time) before the same VM should be asked again, after a refusal with
    ``code``. ``retry_at`` is the check's own answer where it has one (the rate window, a pause's end); a back-off
    code counts one more failure of ``vm``."""
    rule = RULES[code]
    if rule is Rule.RATE_WINDOW:
        return max(0.0, retry_at - now) if retry_at is not None else 0.0
    if rule is Rule.BACKOFF:
        return backoff.failed(vm)
    if rule is Rule.POLL:
        return POLL_S
    if rule is Rule.LONG:
        return LONG_S
    if rule is Rule.ROOM:
        return ROOM_S
    if rule is Rule.PAUSE:
        return LONG_S if retry_at is None else min(LONG_S, max(0.0, retry_at - now))
    return 0.0
