"""The actuator's safety rules, whatever a decider says. Pure: every input is an argument.

``admit`` runs before the hypervisor is asked anything (right host, not expired); ``plan`` runs on the
VM's current view (the decider saw the same count; the target is inside both the hypervisor's and the
actuator's own bounds) and says how many single-vCPU steps to take, and in which direction.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import msgspec

from services.actuator.drivers.base import VmView
from shared.messages import ErrorCode, ScaleCommand


class Bounds(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    min_vcpus: Annotated[int, msgspec.Meta(ge=1)] = 1
    max_vcpus: Annotated[int, msgspec.Meta(ge=1)] = 1024


class Refusal(NamedTuple):
    code: ErrorCode
    message: str


class Plan(NamedTuple):
    direction: int  # +1 plug, -1 unplug, 0 nothing to do
    steps: int


def admit(command: ScaleCommand, own_host: str, now: float) -> Refusal | None:
    if command.host != own_host:
        return Refusal(ErrorCode.WRONG_HOST, f"command for host {command.host} reached actuator of {own_host}")
    if now >= command.expires_at:
        return Refusal(ErrorCode.EXPIRED, f"expired {now - command.expires_at:.1f} s ago")
    return None


def plan(command: ScaleCommand, view: VmView, bounds: Bounds) -> Plan | Refusal:
    low = max(bounds.min_vcpus, view.min_vcpus, 1)
    high = min(bounds.max_vcpus, view.max_vcpus)
    if not low <= command.target_vcpus <= high:
        return Refusal(ErrorCode.OUT_OF_BOUNDS, f"target {command.target_vcpus} outside [{low}, {high}]")
    if view.online_vcpus != command.seen_vcpus:
        return Refusal(ErrorCode.STALE_VIEW,
                       f"decided on {command.seen_vcpus} vCPUs but the VM has {view.online_vcpus}")
    delta = command.target_vcpus - view.online_vcpus
    return Plan(direction=(delta > 0) - (delta < 0), steps=abs(delta))
