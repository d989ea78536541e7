"""The collector's plug-in interface: a source reads cumulative CPU counters for the VMs it can see, and may
read its host (CPUs, and the vCPUs every running VM holds).

Sources report counters (seconds since some origin), never rates: one pure function
(``services.collector.rates``) turns two readings into a MetricSample, and another
(``services.collector.hoststate``) two host readings into a HostState, whatever the source. The host reading is
optional (:func:`host_reader`): a source without one, such as an older plug-in, publishes no HostState. So is a
watch for pressure between the rounds (:func:`pressure_watcher`): a source that has one lets the collector send an
urgent round the moment a VM it reads says it is short of CPU.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, cast

import msgspec


class MemoryCounters(msgspec.Struct, frozen=True, kw_only=True):
    """One VM's memory at one instant, in bytes: sizes as they are, and (where the source knows them) cumulative
    counters, which ``services.collector.rates`` turns into rates as it does the CPU's."""

    size_bytes: int  # what the hypervisor gives the guest now
    min_bytes: int  # the least it may have live (boot RAM for virtio-mem)
    max_bytes: int  # the most it may have live
    used_bytes: int | None = None  # the guest's MemTotal - MemAvailable
    available_bytes: int | None = None  # the guest's MemAvailable
    swap_in_bytes: float | None = None  # bytes swapped in since some origin
    psi_some_seconds: float | None = None  # PSI memory some total, seconds
    oom_kills: int | None = None  # out-of-memory kills in the guest so far


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """One VM's counters at one instant (``time`` on the shared clock)."""

    vm: str
    time: float
    online_vcpus: int
    min_vcpus: int
    max_vcpus: int
    cpu_seconds: float
    # Busy seconds per vCPU (or per host thread), keyed by a stable id; None where the source cannot tell.
    per_vcpu_seconds: dict[str, float] | None = None
    # Core-seconds of demand that waited for a CPU (run-queue delay, or simulated excess demand).
    waiting_core_seconds: float | None = None
    # Seconds during which some task waited (PSI cpu.some total), where the source knows it.
    psi_some_seconds: float | None = None
    # The VM's memory, where the source reads it (the sample's memory part, schema v2).
    memory: MemoryCounters | None = None


class Source(Protocol):
    """A collector source. ``name`` goes into every sample's ``source`` field."""

    name: str

    async def read(self) -> list[Reading]:
        """Counters of every VM visible now. A VM that cannot be read is left out, never reported as idle."""
        ...

    async def close(self) -> None: ...


class HostReading(msgspec.Struct, frozen=True, kw_only=True):
    """The host at one instant (``time`` on the shared clock): its CPUs and every running VM's online vCPUs, managed
    or not (a VM the collector does not sample still holds its vCPUs), and where the source knows them, counters of
    host wait, the queue of VMs waiting to start, and the host's memory with each VM's."""

    time: float
    cpus: int
    vms: Mapping[str, int]  # VM name -> online vCPUs
    # Cumulative core-seconds that running vCPUs waited for a host core, keyed by a stable id (a vCPU thread, a VM,
    # or one key for the whole host): each key's increase counts, so a key that appears or vanishes adds nothing.
    host_wait_seconds: Mapping[str, float] | None = None
    waiting_vms: int = 0
    waiting_vcpus: int = 0
    next_waiting_vcpus: int | None = None
    # The host's memory and every running VM's (bytes: the larger of its size and the size last asked for), where
    # the source knows them; None: the host's memory is not reported (the HostState says nothing of memory).
    memory_bytes: int | None = None
    vm_memory: Mapping[str, int] | None = None


HostReader = Callable[[], Awaitable[HostReading | None]]


def host_reader(source: object) -> HostReader | None:
    """The source's ``async def host() -> HostReading | None``, called right after its ``read()`` each round (so it
    may answer from what that read saw); None for a source without one."""
    reader = getattr(source, "host", None)
    return cast(HostReader, reader) if callable(reader) else None


class PressureWatch(Protocol):
    """A source's watch for pressure, running until closed."""

    # At most one firing a window (the trigger's own limit), so the collector's urgent gate takes this window too.
    window_s: float

    def close(self) -> None:
        """Stop watching. Idempotent."""
        ...


PressureWatcher = Callable[[Callable[[], None]], PressureWatch]


def pressure_watcher(source: object) -> PressureWatcher | None:
    """The source's ``watch_pressure(fired) -> PressureWatch``, called on the running event loop: it starts watching
    and calls ``fired`` on the loop each time a VM it reads says it is under CPU pressure; OSError when it cannot
    watch (no PSI in the kernel, say). None for a source without one."""
    watcher = getattr(source, "watch_pressure", None)
    return cast(PressureWatcher, watcher) if callable(watcher) else None
