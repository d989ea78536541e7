"""The live memory tally: byte-seconds allocated against what the guests used, swap time, out-of-memory kills and
memory changes, from samples and results, for ``hotplug up``'s summary and ``hotplug bench decisions``. Pure.

The oracle gives each VM, in each sample, exactly what its guest used (``used_bytes``): perfect foresight, no
headroom, no cost of change; a sample whose source does not read the guest's use adds to neither side. A VM is
swapping in an interval in which it swapped anything in. OOM kills are read from each guest's running count: its
rises over the run, and a first sample's count as it stands (the simulator's guests boot in the run; a real
guest's count may hold kills from before).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.messages import MemoryReading, MetricSample, Resource, ScaleResult

MEMORY_SCORE_KEYS = (
    "memory_alloc_gib_hours",
    "memory_ratio_to_oracle",
    "swap_pct",
    "oom_kills",
    "memory_changes_per_vm_hour",
    "memory_given_back_gib",
)
_GIB = 1024**3


@dataclass
class MemoryTally:
    vm_seconds: float = 0.0  # VM-seconds of samples that carried memory
    alloc_byte_s: float = 0.0  # of samples whose guest's use is known (the oracle's side)
    oracle_byte_s: float = 0.0
    swap_s: float = 0.0
    oom_kills: int = 0
    changes: int = 0
    grown_bytes: int = 0
    given_back_bytes: int = 0
    _kills_seen: dict[tuple[str, str], int] = field(default_factory=dict)

    def add_sample(self, sample: MetricSample) -> None:
        if sample.memory is not None:
            self.add_memory(sample.host, sample.vm, sample.memory, sample.interval_s)

    def add_memory(self, host: str, vm: str, memory: MemoryReading, dt: float) -> None:
        """A sample's memory part, over ``dt`` seconds: for runs that read memory without making samples (the pool
        benchmark)."""
        self.vm_seconds += dt
        if memory.used_bytes is not None:
            self.alloc_byte_s += memory.size_bytes * dt
            self.oracle_byte_s += memory.used_bytes * dt
        if memory.swap_in_bytes_per_s:
            self.swap_s += dt
        if memory.oom_kills is not None:
            key = (host, vm)
            seen = self._kills_seen.get(key, 0)
            if memory.oom_kills > seen:
                self.oom_kills += memory.oom_kills - seen
            self._kills_seen[key] = max(seen, memory.oom_kills)

    def add_tally(self, other: MemoryTally) -> None:
        """Another run's figures, counted in with these (its VMs are other VMs, even under the same names)."""
        self.vm_seconds += other.vm_seconds
        self.alloc_byte_s += other.alloc_byte_s
        self.oracle_byte_s += other.oracle_byte_s
        self.swap_s += other.swap_s
        self.oom_kills += other.oom_kills
        self.changes += other.changes
        self.grown_bytes += other.grown_bytes
        self.given_back_bytes += other.given_back_bytes

    def add_result(self, result: ScaleResult) -> None:
        """A memory result: the change it made (a partial one too), if any."""
        before, after = result.memory_before_bytes, result.memory_after_bytes
        if result.resource is not Resource.MEMORY or before is None or after is None or before == after:
            return
        self.changes += 1
        self.grown_bytes += max(0, after - before)
        self.given_back_bytes += max(0, before - after)

    def scores(self) -> dict[str, float]:
        """The scores named in ``MEMORY_SCORE_KEYS``; each 0 where its denominator is."""
        hours = self.vm_seconds / 3600
        return {
            "memory_alloc_gib_hours": self.alloc_byte_s / _GIB / 3600,
            "memory_ratio_to_oracle": self.alloc_byte_s / self.oracle_byte_s if self.oracle_byte_s else 0.0,
            "swap_pct": 100 * self.swap_s / self.vm_seconds if self.vm_seconds else 0.0,
            "oom_kills": float(self.oom_kills),
            "memory_changes_per_vm_hour": self.changes / hours if hours else 0.0,
            "memory_given_back_gib": self.given_back_bytes / _GIB,
        }
