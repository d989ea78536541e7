"""The memory counters of the ``qemu`` and ``libvirt`` sources: the hypervisor's sizes (the very ones their drivers'
``read_memory`` reports: ``shared.qemu.memview``, ``shared.libvirt.memview``) with the guest's own figures.

Used is the guest's MemTotal − MemAvailable, as the drivers' ``below-used`` guard reads it. Swap-in is a cumulative
count of bytes. The QEMU test guest's STAT line carries PSI memory's cumulative ``some`` total (microseconds), which
the collector turns into a share of its own interval as it does swap-in (not avg10, a rate over the guest's own
10 s, sampled at the STAT line's pace); older guests' lines lack it (None). The balloon's stats have no PSI, and
neither guest gives its OOM kills: those stay None ("not measured").
"""

from __future__ import annotations

from typing import Protocol

from services.collector.sources.base import MemoryCounters
from shared.libvirt.memstats import MemoryStats
from shared.qemu.vm import GuestStat

# /proc/vmstat's pswpin counts pages; the test guest is x86 with 4 KiB pages.
GUEST_PAGE_BYTES = 4096


class Sizes(Protocol):
    """What both hypervisors' ``MemorySizes`` have."""

    @property
    def size_bytes(self) -> int: ...
    @property
    def min_bytes(self) -> int: ...
    @property
    def max_bytes(self) -> int: ...


def _used(total: int | None, available: int | None) -> int | None:
    return None if total is None or available is None else max(0, total - available)


def qemu_counters(sizes: Sizes | None, stat: GuestStat | None) -> MemoryCounters | None:
    """A QEMU test guest's memory: QEMU's sizes and its latest STAT line (None: a VM without a memory device, or
    not read this round). Pure."""
    if sizes is None:
        return None
    return MemoryCounters(
        size_bytes=sizes.size_bytes,
        min_bytes=sizes.min_bytes,
        max_bytes=sizes.max_bytes,
        used_bytes=_used(stat.mem_total_bytes, stat.mem_available_bytes) if stat else None,
        available_bytes=stat.mem_available_bytes if stat else None,
        swap_in_bytes=float(stat.swap_in * GUEST_PAGE_BYTES) if stat and stat.swap_in is not None else None,
        psi_some_seconds=(
            stat.psi_memory_some_total_us / 1e6 if stat and stat.psi_memory_some_total_us is not None else None
        ),
    )


def libvirt_counters(sizes: Sizes | None, stats: MemoryStats) -> MemoryCounters | None:
    """A domain's memory: libvirt's sizes and the balloon's stats (the guest's figures, once its virtio_balloon
    driver sends them). Pure."""
    if sizes is None:
        return None
    return MemoryCounters(
        size_bytes=sizes.size_bytes,
        min_bytes=sizes.min_bytes,
        max_bytes=sizes.max_bytes,
        used_bytes=stats.used_bytes,
        available_bytes=stats.available_bytes,
        swap_in_bytes=None if stats.swap_in_bytes is None else float(stats.swap_in_bytes),
    )
