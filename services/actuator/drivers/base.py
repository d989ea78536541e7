"""The actuator's plug-in interface: a driver reads a VM's vCPUs and adds or removes one at a time.

One vCPU per call matches the hypervisors (VBoxManage plugcpu/unplugcpu, QMP device_add/device_del). A
driver raises :class:`DriverError` with a stable code and the hypervisor's own message; it never decides
whether a change is wise (that is ``services.actuator.checks``).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from shared.messages import ErrorCode


class VmView(msgspec.Struct, frozen=True, kw_only=True):
    vm: str
    online_vcpus: int
    min_vcpus: int
    max_vcpus: int


class DriverError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Driver(Protocol):
    name: str

    async def read(self, vm: str) -> VmView:
        """The VM's vCPUs as the hypervisor reports them now."""
        ...

    async def plug(self, vm: str) -> None:
        """Add one vCPU."""
        ...

    async def unplug(self, vm: str) -> None:
        """Remove one vCPU (never CPU 0)."""
        ...

    async def close(self) -> None: ...
