"""The actuator's safety rules for a memory command, whatever a decider says. Pure: every input is an argument.

``plan_memory`` runs on the VM's current memory view: the target, rounded up to the hypervisor's step, is inside
both the hypervisor's limits and the actuator's own bounds; a VM already there needs nothing; otherwise the
decider must have seen the size the VM has (within a step). A shrink must leave the guest what it uses plus a
margin (``shrink_floor``): virtio-mem and the balloon take what they are asked, and a guest left short OOM-kills
its work or panics (../shared/docs/memory.md, trap 1). A shrink of a guest whose use the driver cannot read is
refused: the actuator does not shrink blind. Deciders keep their own, larger headroom; this is the backstop.
"""

from __future__ import annotations

from typing import NamedTuple

from services.actuator.checks import Bounds, Refusal
from services.actuator.drivers.base import MemoryView
from shared.messages import ErrorCode, ScaleCommand
from shared.units import MIB, align_down, align_up, format_size

# The least a guest keeps above what it uses: 5 % of its use, and at least 64 MiB (the kernel's own reserves,
# a burst of allocations while the shrink runs, and the memmap Linux keeps per 128 MiB block).
SHRINK_MARGIN_FRACTION = 0.05
SHRINK_MARGIN_MIN_BYTES = 64 * MIB


class MemoryPlan(NamedTuple):
    """Where the VM's memory goes: ``target`` bytes (aligned to the hypervisor's step), and which way."""

    target: int
    direction: int  # +1 grow, -1 shrink, 0 nothing to do

    @property
    def op(self) -> str:
        """The operation, as the actuator's counters name it."""
        return "memory-grow" if self.direction > 0 else "memory-shrink"


def allowed_memory(view: MemoryView, bounds: Bounds) -> tuple[int, int]:
    """The sizes the VM may take, in bytes: the actuator's bounds within the hypervisor's, on the step's grid."""
    low = max(view.min_bytes, bounds.min_memory_bytes or 0)
    high = min(view.max_bytes, bounds.max_memory_bytes or view.max_bytes)
    return align_up(low, view.step_bytes), align_down(high, view.step_bytes)


def shrink_floor(used_bytes: int) -> int:
    """The least memory a guest that uses ``used_bytes`` may be left with."""
    return used_bytes + max(SHRINK_MARGIN_MIN_BYTES, int(used_bytes * SHRINK_MARGIN_FRACTION))


def plan_memory(command: ScaleCommand, view: MemoryView, bounds: Bounds) -> MemoryPlan | Refusal:
    """What to do with ``view`` for a memory ``command``: the aligned target and its direction, or why not."""
    seen, wanted = command.memory_change()
    step = max(view.step_bytes, 1)
    low, high = allowed_memory(view, bounds)
    target = align_up(wanted, step)
    size = view.size_bytes
    # As for vCPUs: bounds narrowed under a running VM must not strand it where no order may move it.
    if not (low <= target <= high or high < target < size or size < target < low):
        return Refusal(
            ErrorCode.OUT_OF_BOUNDS,
            f"target {format_size(wanted)} outside [{format_size(low)}, {format_size(high)}]",
        )
    if abs(size - target) < step:
        return MemoryPlan(target, 0)  # there already (a command redelivered after its effect, say)
    if abs(size - seen) >= step:
        return Refusal(ErrorCode.STALE_VIEW, f"decided on {format_size(seen)} but the VM has {format_size(size)}")
    if target < size:
        used = view.guest_used_bytes
        if used is None:
            return Refusal(
                ErrorCode.BELOW_USED, "the guest's memory use cannot be read, and the actuator does not shrink blind"
            )
        floor = shrink_floor(used)
        if target < floor:
            return Refusal(
                ErrorCode.BELOW_USED,
                f"{format_size(target)} would leave the guest less than it uses ({format_size(used)}) plus its "
                f"margin: at least {format_size(align_up(floor, step))}",
            )
    return MemoryPlan(target, 1 if target > size else -1)
