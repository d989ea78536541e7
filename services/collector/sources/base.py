"""The collector's plug-in interface: a source reads cumulative CPU counters for the VMs it can see.

Sources report counters (seconds since some origin), never rates: one pure function
(``services.collector.rates``) turns two readings into a MetricSample, whatever the source.
"""

from __future__ import annotations

from typing import Protocol

import msgspec


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


class Source(Protocol):
    """A collector source. ``name`` goes into every sample's ``source`` field."""

    name: str

    async def read(self) -> list[Reading]:
        """Counters of every VM visible now. A VM that cannot be read is left out, never reported as idle."""
        ...

    async def close(self) -> None: ...
