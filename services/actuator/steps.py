"""Step-and-verify: the one way a VM's vCPU count is changed, for the actuator and for ``hotplug vbox|qemu|libvirt
set``.

A resize is taken one vCPU per driver call, and after every call the VM is read again: the step counts only if
the count moved by exactly one in the asked direction. Anything else (no change, a jump, the wrong way) stops the
resize with ``not-verified``, so no further step is built on a count that is not what was asked. Every driver call
has a deadline; one that passes it is a ``timeout``. Failures are :class:`DriverError` with the codes a
``ScaleResult`` carries, so the command line and the actuator report the same code for the same event.

Memory moves in one request (``move_memory``): the hypervisor takes it at once and the guest follows in its own time
(virtio-mem: ~0.1 s to grow, ~1–1.5 s to give back a GiB under TCG; libvirt's view lags by up to a second), so the
size is read until it is within a step of the target. A size that stops moving short of it has stalled: pinned
pages, a balloon out of puff (../shared/docs/memory.md, traps 2 and 5). That is ``partial`` if it moved at all,
``not-verified`` if not; the size reached is read again for the result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

from services.actuator.checks import Bounds, Plan, Refusal, steps_between, within_bounds
from services.actuator.drivers.base import Driver, DriverError, MemoryResizer, memory_resizer
from services.actuator.memory_checks import MemoryPlan
from shared.config.schema import ActuatorSettings
from shared.messages import ErrorCode
from shared.units import format_size

T = TypeVar("T")

# How long one driver call may take before it counts as a timeout (the actuator's --step-timeout default).
STEP_TIMEOUT_S = ActuatorSettings().step_timeout
# Memory: how often the size is read while it moves, and how long it may stand still short of the target. libvirt's
# size events come at most once a second, and a virtio-mem shrink shows nothing for its first ~0.4 s: 5 s of no
# movement is a stall, not a pause between two reports.
MEMORY_POLL_S = 0.1
MEMORY_STALL_S = 5.0
# How often a long memory move tells JetStream the command is still being worked on.
MEMORY_KEEPALIVE_S = 2.0


class Resized(NamedTuple):
    before: int
    after: int


async def call(driver: Driver, awaitable: Awaitable[T], timeout_s: float) -> T:
    """``awaitable`` (a call of ``driver``), or a ``timeout`` DriverError once ``timeout_s`` has passed."""
    try:
        return await asyncio.wait_for(awaitable, timeout=timeout_s)
    except TimeoutError as exc:
        raise DriverError(ErrorCode.TIMEOUT, f"{driver.name} did not answer within {timeout_s} s") from exc


async def take_steps(
    driver: Driver,
    vm: str,
    plan: Plan,
    current: int,
    *,
    timeout_s: float = STEP_TIMEOUT_S,
    before_step: Callable[[], Awaitable[None]] | None = None,
    after_step: Callable[[], None] | None = None,
) -> int:
    """Take ``plan``'s steps from ``current`` vCPUs, verifying each; the count read after the last one.

    ``before_step`` runs before each driver call (the actuator tells JetStream the command is still being
    worked on), ``after_step`` after each call the driver accepted (the actuator counts it)."""
    op = driver.plug if plan.direction > 0 else driver.unplug
    for _ in range(plan.steps):
        if before_step is not None:
            await before_step()
        await call(driver, op(vm), timeout_s)
        if after_step is not None:
            after_step()
        now = (await call(driver, driver.read(vm), timeout_s)).online_vcpus
        expected = current + plan.direction
        if now != expected:
            raise DriverError(
                ErrorCode.NOT_VERIFIED, f"after one {plan.op} the VM has {now} vCPUs, expected {expected}"
            )
        current = now
    return current


async def resize(
    driver: Driver, vm: str, target: int, *, bounds: Bounds | None = None, timeout_s: float = STEP_TIMEOUT_S
) -> Resized | Refusal:
    """Bring ``vm`` to ``target`` vCPUs now, within ``bounds`` and the hypervisor's own: the counts before and
    after, or why not (the driver's error, out-of-bounds, not-verified, timeout)."""
    try:
        view = await call(driver, driver.read(vm), timeout_s)
        refused = within_bounds(target, view, bounds or Bounds())
        if refused is not None:
            return refused
        before = view.online_vcpus
        after = await take_steps(driver, vm, steps_between(before, target), before, timeout_s=timeout_s)
    except DriverError as exc:
        return Refusal(exc.code, exc.message)
    return Resized(before, after)


def resizer_of(driver: Driver) -> MemoryResizer:
    """``driver`` as one that moves memory, or a ``hotplug-disabled`` DriverError saying it does not."""
    resizer = memory_resizer(driver)
    if resizer is None:
        raise DriverError(ErrorCode.HOTPLUG_DISABLED, f"the {driver.name} driver does not move memory")
    return resizer


async def move_memory(
    driver: Driver,
    vm: str,
    plan: MemoryPlan,
    before: int,
    *,
    timeout_s: float = STEP_TIMEOUT_S,
    stall_s: float = MEMORY_STALL_S,
    poll_s: float = MEMORY_POLL_S,
    keepalive: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Ask for ``plan.target`` bytes (from ``before``) and read the VM's memory until it is within a step of it: the
    size then.
    ``keepalive`` runs every ``MEMORY_KEEPALIVE_S`` while the size moves (the actuator's in-progress notice)."""
    resizer = resizer_of(driver)
    await call(driver, resizer.resize_memory(vm, plan.target), timeout_s)
    last, last_moved, last_kept = -1, time.monotonic(), time.monotonic()
    while True:
        view = await call(driver, resizer.read_memory(vm), timeout_s)
        size = view.size_bytes
        if abs(size - plan.target) < max(view.step_bytes, 1):
            return size
        now = time.monotonic()
        if size != last:
            last, last_moved = size, now
        elif now - last_moved >= stall_s:
            code = ErrorCode.PARTIAL if size != before else ErrorCode.NOT_VERIFIED
            raise DriverError(
                code,
                f"memory stopped at {format_size(size)} on its way to {format_size(plan.target)} "
                f"(no change for {stall_s:g} s)",
            )
        if keepalive is not None and now - last_kept >= MEMORY_KEEPALIVE_S:
            await keepalive()
            last_kept = now
        await asyncio.sleep(poll_s)
