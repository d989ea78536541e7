"""Resize a VM now, one vCPU per step, through an actuator driver: ``hotplug vbox set``, ``hotplug qemu set`` and
``hotplug libvirt set``.

The steps and their checks are the actuator's own (services/actuator/steps.py); this module only formats the
outcome: one JSON line on success; on failure ``<error code>: <message>`` on stderr, and 1 returned.
"""

from __future__ import annotations

import json
import sys

from services.actuator import steps
from services.actuator.checks import Refusal
from services.actuator.drivers.base import Driver


async def resize(driver: Driver, vm: str, target: int) -> int:
    outcome = await steps.resize(driver, vm, target)
    if isinstance(outcome, Refusal):
        print(f"{outcome.code.value}: {outcome.message}", file=sys.stderr)
        return 1
    print(json.dumps({"vm": vm, "ok": True, "vcpus_before": outcome.before, "vcpus_after": outcome.after}))
    return 0
