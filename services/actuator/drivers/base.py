"""The actuator's plug-in interface: a driver reads a VM's vCPUs and adds or removes one at a time.

One vCPU per call matches the hypervisors (VBoxManage plugcpu/unplugcpu, QMP device_add/device_del). A
driver raises :class:`DriverError` with a stable code and the hypervisor's own message; it never decides
whether a change is wise (that is ``services.actuator.checks``).

A driver may also report its host (``host_view``): the host's CPUs and the online vCPUs of every VM running on it,
managed or not, and the host's memory and each VM's (every built-in driver does: the simulator when it models the
host's memory; qemu, libvirt and virtualbox unless a running VM's memory could not be read for that view), so the
actuator can keep the host within its capacity (``services.actuator.reservations``). It is
optional: a driver without it (a plug-in written before) means "host unknown", and the actuator arbitrates nothing,
as before.

A driver may also move memory (``MemoryResizer``): read a VM's memory and ask for a new size, in bytes. The
request is asynchronous on every hypervisor (virtio-mem and the balloon move in the guest's own time), so
``resize_memory`` returns once the hypervisor has taken the request and the actuator polls ``read_memory`` until
the size reaches the target or stops moving.
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
    (managed or not: what the actuator does not move still takes cores).

    Where the driver knows them, the host's memory (``memory_bytes``) and every running VM's memory (``vm_memory``,
    bytes: the larger of its size and the size last asked for, as ``read_memory`` says, since a grow under way will
    land). A driver that sets ``memory_bytes`` lists every running VM in ``vm_memory``; None (a driver, or a plug-in,
    that reports no memory) leaves the host's memory unarbitrated."""

    cpus: int
    vms: dict[str, int]
    memory_bytes: int | None = None
    vm_memory: dict[str, int] = {}


class MemoryView(msgspec.Struct, frozen=True, kw_only=True):
    """A VM's memory as the hypervisor (and, where it reports, the guest) sees it now; every size in bytes.

    ``size_bytes`` is what the guest has: boot RAM less what a balloon holds, plus what virtio-mem has plugged.
    ``requested_bytes`` is what was last asked for; while a change is under way, or stuck (pinned pages), the size
    falls short of it. ``min_bytes``/``max_bytes`` are the hypervisor's limits (virtio-mem: boot RAM to boot RAM plus
    the device's size; balloon: its floor to boot RAM), ``step_bytes`` the unit a request is made in (the virtio-mem
    block, 2 MiB; 1 MiB for a balloon). ``guest_*``: the guest's own view (MemTotal, MemAvailable), or None where the
    driver cannot read it."""

    vm: str
    size_bytes: int
    requested_bytes: int
    min_bytes: int
    max_bytes: int
    step_bytes: int
    method: str  # how memory moves: "virtio-mem", "balloon", "virtio-mem+balloon", "simulated"
    guest_total_bytes: int | None = None
    guest_available_bytes: int | None = None

    @property
    def guest_used_bytes(self) -> int | None:
        """What the guest uses (MemTotal − MemAvailable), or None when the guest's view is not known."""
        if self.guest_total_bytes is None or self.guest_available_bytes is None:
            return None
        return max(0, self.guest_total_bytes - self.guest_available_bytes)


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
        """The host's CPUs and every running VM's online vCPUs (and memory, where known), read now (cheap: read
        before each grow)."""
        ...


class MemoryResizer(Protocol):
    """A driver that moves guest memory (optional: a driver without it refuses memory commands)."""

    async def read_memory(self, vm: str) -> MemoryView:
        """The VM's memory now (cheap: the actuator polls it while a change is under way)."""
        ...

    async def resize_memory(self, vm: str, target_bytes: int) -> None:
        """Ask for ``target_bytes`` (a multiple of ``step_bytes``, within ``min_bytes``..``max_bytes``; else
        DriverError OUT_OF_BOUNDS). Returns once the hypervisor took the request, not when the guest has it."""
        ...


def memory_resizer(driver: Driver) -> MemoryResizer | None:
    """The driver as one that moves memory, or None."""
    has_both = callable(getattr(driver, "read_memory", None)) and callable(getattr(driver, "resize_memory", None))
    return cast(MemoryResizer, driver) if has_both else None


def host_aware(driver: Driver) -> HostAware | None:
    """The driver as one that reports its host, or None: a driver without ``host_view`` leaves the host unknown."""
    return cast(HostAware, driver) if callable(getattr(driver, "host_view", None)) else None
