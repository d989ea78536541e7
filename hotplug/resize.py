"""Resize a VM now, one vCPU per step, through an actuator driver: ``hotplug vbox set`` and ``hotplug qemu set``.

Prints one JSON line on success; on failure prints ``<error code>: <message>`` to stderr and returns 1.
"""

from __future__ import annotations

import json
import sys

from services.actuator.drivers.base import Driver, DriverError


async def resize(driver: Driver, vm: str, target: int) -> int:
    try:
        view = await driver.read(vm)
        before = current = view.online_vcpus
        if not view.min_vcpus <= target <= view.max_vcpus:
            print(
                f"out-of-bounds: {vm} takes {view.min_vcpus} to {view.max_vcpus} vCPUs, not {target}", file=sys.stderr
            )
            return 1
        while current != target:
            await (driver.plug(vm) if target > current else driver.unplug(vm))
            now = (await driver.read(vm)).online_vcpus
            if now == current:
                print(f"not-verified: {vm} still has {now} vCPUs after one step", file=sys.stderr)
                return 1
            current = now
    except DriverError as exc:
        print(f"{exc.code.value}: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps({"vm": vm, "ok": True, "vcpus_before": before, "vcpus_after": current}))
    return 0
