"""A domain's memory figures from libvirt's balloon statistics, for the collector: one small struct from either
``conn.domainListGetStats([dom], VIR_DOMAIN_STATS_BALLOON)`` (``balloon.*`` keys) or ``dom.memoryStats()``.

libvirt reports these in KiB. ``balloon.current`` (``memoryStats()['actual']`` for the balloon alone) is what the
guest has: balloon actual plus virtio-mem ``<current>`` in the domain stats. The guest's own figures (``available``
= MemTotal, ``usable`` = MemAvailable, ``swap_in``) come only from a guest whose virtio_balloon driver sends stats
(``<stats period=...>``); until then they are absent, and a figure the guest does not send may read 2^64 − 1
(shared/docs/memory.md §4): both mean None here, never 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

KIB = 1024
_ABSENT = 2**64 - 1


@dataclass(frozen=True)
class MemoryStats:
    """Bytes; None where libvirt or the guest did not say."""

    size_bytes: int | None  # what the guest has (balloon actual, plus virtio-mem <current> in the domain stats)
    total_bytes: int | None  # the guest's MemTotal
    available_bytes: int | None  # the guest's MemAvailable
    swap_in_bytes: int | None  # read from swap since boot (a counter)

    @property
    def used_bytes(self) -> int | None:
        """What the guest uses: MemTotal − MemAvailable."""
        if self.total_bytes is None or self.available_bytes is None:
            return None
        return max(0, self.total_bytes - self.available_bytes)


def _kib(values: Mapping[str, object], key: str) -> int | None:
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value < 0 or value >= _ABSENT:
        return None
    return int(value) * KIB


def from_domain_stats(stats: Mapping[str, object]) -> MemoryStats:
    """From one domain's row of ``domainListGetStats``/``getAllDomainStats`` with ``VIR_DOMAIN_STATS_BALLOON``."""
    return MemoryStats(
        size_bytes=_kib(stats, "balloon.current"),
        total_bytes=_kib(stats, "balloon.available"),
        available_bytes=_kib(stats, "balloon.usable"),
        swap_in_bytes=_kib(stats, "balloon.swap_in"),
    )


def from_memory_stats(stats: Mapping[str, object]) -> MemoryStats:
    """From ``dom.memoryStats()``; its ``actual`` is the balloon alone (virtio-mem not counted)."""
    return MemoryStats(
        size_bytes=_kib(stats, "actual"),
        total_bytes=_kib(stats, "available"),
        available_bytes=_kib(stats, "usable"),
        swap_in_bytes=_kib(stats, "swap_in"),
    )
