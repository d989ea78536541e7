"""The actuator's plug-in interface: a driver reads a VM's vCPUs and adds or removes one at a time.

One vCPU per call matches the hypervisors (VBoxManage plugcpu/unplugcpu, QMP device_add/device_del). A
driver raises :class:`DriverError` with a stable code and the hypervisor's own message; it never decides
whether a change is wise (that is ``services.actuator.checks``).

A driver may also report its host (``host_view``): the host's CPUs and the online vCPUs of every VM running on it,
managed or not, so the actuator can keep the host within its capacity (``services.actuator.reservations``). It is
optional: a driver without it (a plug-in written before) means "host unknown", and the actuator arbitrates nothing,
as before.
"""

from __future__ import annotations

from typing import Protocol, cast

import msgspec

from shared.messages import ErrorCode


class VmView(msgspec.Struct, frozen=True, kw_only=True):
    vm: str
    online_vcpus: int
    min_vcpus: int
    max_vcpus: int


class HostView(msgspec.Struct, frozen=True, kw_only=True):
    """A driver's host as the hypervisor reports it now: its CPUs, and the online vCPUs of every running VM on it
    (managed or not: what the actuator does not move still takes cores)."""

    cpus: int
    vms: dict[str, int]


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


class HostAware(Protocol):
    """A driver that reports its host (every built-in one does)."""

    async def host_view(self) -> HostView:
        """The host's CPUs and every running VM's online vCPUs, read now (cheap: read before each grow)."""
        ...


def host_aware(driver: Driver) -> HostAware | None:
    """The driver as one that reports its host, or None: a driver without ``host_view`` leaves the host unknown."""
    return cast(HostAware, driver) if callable(getattr(driver, "host_view", None)) else None
