"""The memory counters of the ``qemu``, ``libvirt`` and ``virtualbox`` sources: the hypervisor's sizes (the very ones
their drivers' ``read_memory`` reports: ``shared.qemu.memview``, ``shared.libvirt.memview``,
``shared.virtualbox.balloon_sizes``) with the guest's own figures.

Used is the guest's MemTotal − MemAvailable, as the drivers' ``below-used`` guard reads it. Swap-in is a cumulative
count of bytes. The QEMU test guest's STAT line carries PSI memory's cumulative ``some`` total (microseconds), which
the collector turns into a share of its own interval as it does swap-in (not avg10, a rate over the guest's own
10 s, sampled at the STAT line's pace), and its OOM kills since boot (/proc/vmstat ``oom_kill``); older guests'
lines lack them (None, "not measured"). A libvirt domain booted from the same image says the same STAT line, so its
OOM kills come from there too; the balloon's stats have neither PSI nor OOM kills, so another guest's stay None.
VirtualBox's Guest Additions report the guest's total, free, cache and balloon only: no swap, PSI nor OOM kills.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from services.collector.sources.base import MemoryCounters
from shared.libvirt.memstats import MemoryStats
from shared.qemu.vm import GuestStat
from shared.units import KIB
from shared.virtualbox import GUEST_RAM_BALLOON, GUEST_RAM_FREE, GUEST_RAM_TOTAL

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
        oom_kills=stat.oom_kills if stat else None,
    )


def libvirt_counters(sizes: Sizes | None, stats: MemoryStats, stat: GuestStat | None = None) -> MemoryCounters | None:
    """A domain's memory: libvirt's sizes and the balloon's stats (the guest's figures, once its virtio_balloon
    driver sends them), with the OOM kills of the test guest's latest STAT line (``stat``: None for another guest).
    Pure."""
    if sizes is None:
        return None
    return MemoryCounters(
        size_bytes=sizes.size_bytes,
        min_bytes=sizes.min_bytes,
        max_bytes=sizes.max_bytes,
        used_bytes=stats.used_bytes,
        available_bytes=stats.available_bytes,
        swap_in_bytes=None if stats.swap_in_bytes is None else float(stats.swap_in_bytes),
        oom_kills=stat.oom_kills if stat else None,
    )


def virtualbox_counters(sizes: Sizes, guest_kb: Mapping[str, int]) -> MemoryCounters | None:
    """A VirtualBox VM's memory: the driver's sizes and the Guest Additions' figures (``Guest/RAM/Usage/*``, kB); None
    while the guest reports no total or free memory (no Additions, or before their first report). Pure."""
    total, free = guest_kb.get(GUEST_RAM_TOTAL), guest_kb.get(GUEST_RAM_FREE)
    if total is None or free is None:
        return None
    # Used = Total - Free - Balloon, within [0, Total]. Not Total - Free - Cache: the Additions' Free already holds
    # the cache (Linux sends MemFree + Buffers + Cached, Windows its "available" memory), so that would count the
    # cache twice. The balloon's pages are taken by the guest's own driver, inside its MemTotal: counted as used,
    # a shrink would look like the guest using more and call for a grow.
    used = min(total, max(0, total - free - guest_kb.get(GUEST_RAM_BALLOON, 0)))
    return MemoryCounters(
        size_bytes=sizes.size_bytes,
        min_bytes=sizes.min_bytes,
        max_bytes=sizes.max_bytes,
        used_bytes=used * KIB,
        available_bytes=free * KIB,
    )
