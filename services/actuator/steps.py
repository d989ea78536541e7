"""Step-and-verify: the one way a VM's vCPU count is changed, for the actuator and for ``hotplug vbox|qemu|libvirt
set``.

A resize is taken one vCPU per driver call, and after every call the VM is read again: the step counts only if
the count moved by exactly one in the asked direction. Anything else (no change, a jump, the wrong way) stops the
resize with ``not-verified``, so no further step is built on a count that is not what was asked. Every driver call
has a deadline; one that passes it is a ``timeout``. Failures are :class:`DriverError` with the codes a
``ScaleResult`` carries, so the command line and the actuator report the same code for the same event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

from services.actuator.checks import Bounds, Plan, Refusal, steps_between, within_bounds
from services.actuator.drivers.base import Driver, DriverError
from shared.config.schema import ActuatorSettings
from shared.messages import ErrorCode

T = TypeVar("T")

# How long one driver call may take before it counts as a timeout (the actuator's --step-timeout default).
STEP_TIMEOUT_S = ActuatorSettings().step_timeout


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
