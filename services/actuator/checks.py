"""The actuator's safety rules, whatever a decider says. Pure: every input is an argument.

``admit`` runs before the hypervisor is asked anything (right host, not expired, not from a stale leadership
term); ``plan`` runs on the VM's current view (the target is inside both the hypervisor's and the actuator's
own bounds; a VM already at the target needs nothing; otherwise the decider must have seen the same count)
and says how many single-vCPU steps to take, and in which direction. ``rate_limited`` caps resizes per VM.
``not_paused`` refuses a VM an operator paused (``hotplug pause``), whatever the decider knows of it.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import msgspec

from services.actuator.drivers.base import VmView
from shared.config.schema import ActuatorSettings
from shared.errors import UsageError
from shared.messages import ErrorCode, PauseEvent, ScaleCommand
from shared.pauses import active, describe

_SETTINGS = ActuatorSettings()  # min_vcpus and max_vcpus, declared once with the flags' and the file's


class Bounds(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    min_vcpus: Annotated[int, msgspec.Meta(ge=1)] = _SETTINGS.min_vcpus
    max_vcpus: Annotated[int, msgspec.Meta(ge=1)] = _SETTINGS.max_vcpus
    # Memory, in bytes (None: the hypervisor's own limits only).
    min_memory_bytes: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_memory_bytes: Annotated[int, msgspec.Meta(ge=1)] | None = None


def parse_vm_bounds(items: list[str]) -> dict[str, Bounds]:
    """``["vm-01=1:2"]`` (``--vm-bounds VM=MIN:MAX``; the last '=' separates the name) -> each VM's own bounds."""
    out = {}
    for item in items:
        vm, sep, span = item.rpartition("=")
        low, colon, high = span.partition(":")
        if not sep or not vm or not colon or not low.isdigit() or not high.isdigit() or int(low) > int(high):
            raise UsageError(f"vm_bounds takes VM=MIN:MAX with MIN <= MAX, got {item!r}")
        out[vm] = Bounds(int(low), int(high))
    return out


class Refusal(NamedTuple):
    code: ErrorCode
    message: str
    # Clock time from which the same order could pass this check (rate-limited: when the window frees).
    retry_at: float | None = None


class Plan(NamedTuple):
    direction: int  # +1 plug, -1 unplug, 0 nothing to do
    steps: int

    @property
    def op(self) -> str:
        """The driver operation each step is: ``plug`` or ``unplug``."""
        return "plug" if self.direction > 0 else "unplug"


def admit(command: ScaleCommand, own_host: str, now: float, current_term: int = 0) -> Refusal | None:
    if command.host != own_host:
        return Refusal(ErrorCode.WRONG_HOST, f"command for host {command.host} reached actuator of {own_host}")
    if now >= command.expires_at:
        return Refusal(ErrorCode.EXPIRED, f"expired {now - command.expires_at:.1f} s ago")
    if command.term < current_term:
        return Refusal(
            ErrorCode.STALE_TERM,
            f"sent in leadership term {command.term} of {command.decider}; the current term is {current_term}",
        )
    return None


def rate_limited(changes: list[float], now: float, limit: int, window_s: float) -> Refusal | None:
    """At most ``limit`` resizes of one VM per ``window_s``; ``changes`` holds the times of the recent ones."""
    recent = sorted(t for t in changes if now - t < window_s)
    if len(recent) >= limit:
        # One more resize fits once all but limit - 1 of the recent ones have left the window.
        frees_at = recent[len(recent) - limit] + window_s
        return Refusal(
            ErrorCode.RATE_LIMITED,
            f"{len(recent)} resizes in the last {window_s:.0f} s "
            f"(at most {limit}); the next fits in {frees_at - now:.1f} s",
            retry_at=frees_at,
        )
    return None


def allowed(view: VmView, bounds: Bounds) -> tuple[int, int]:
    """The sizes the VM may take: the actuator's own bounds within the hypervisor's."""
    return max(bounds.min_vcpus, view.min_vcpus, 1), min(bounds.max_vcpus, view.max_vcpus)


def within_bounds(target: int, view: VmView, bounds: Bounds) -> Refusal | None:
    """Refuse a target outside the sizes the VM may take (``allowed``), unless the VM is itself outside them and
    the target brings it closer: bounds narrowed under a running VM (a reloaded config file, new --vm-bounds) must
    not strand it at a size no order may leave."""
    low, high = allowed(view, bounds)
    current = view.online_vcpus
    if low <= target <= high or high < target < current or current < target < low:
        return None
    return Refusal(ErrorCode.OUT_OF_BOUNDS, f"target {target} outside [{low}, {high}]")


def steps_between(current: int, target: int) -> Plan:
    """The single-vCPU steps from ``current`` to ``target`` vCPUs."""
    delta = target - current
    return Plan(direction=(delta > 0) - (delta < 0), steps=abs(delta))


def plan(command: ScaleCommand, view: VmView, bounds: Bounds) -> Plan | Refusal:
    seen, target = command.vcpu_change()
    refused = within_bounds(target, view, bounds)
    if refused is not None:
        return refused
    if view.online_vcpus == target:
        # The desired size is there already (e.g. a command redelivered after its effect): nothing to do.
        return Plan(direction=0, steps=0)
    if view.online_vcpus != seen:
        return Refusal(ErrorCode.STALE_VIEW, f"decided on {seen} vCPUs but the VM has {view.online_vcpus}")
    return steps_between(view.online_vcpus, target)


def not_paused(pause: PauseEvent | None, now: float) -> Refusal | None:
    """Refuse a command for a VM paused at wall time ``now``; asking again makes sense when the pause ends."""
    if pause is None or not active(pause, now):
        return None
    return Refusal(ErrorCode.PAUSED, describe(pause), retry_at=pause.until)
