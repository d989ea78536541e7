"""The scores of a memory trace replay: bytes allocated against the used bytes (the oracle) and the provisioned
ones, and how often the allocation fell short of use. Pure.

The oracle allocates exactly the used memory at each sample: a per-sample perfect fit, with foresight and no cost of
change. A sample whose use was not measured (None) counts for time and changes only. A shortfall is a sample where
the VM had less than it used: in a real guest that is swap or an OOM kill, so each such VM-sample is counted as an
event, and those short by more than 10 % of the use separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from shared.memory_traces import MemorySeries

DEEP_SHORTFALL = 0.10  # a shortfall deeper than this share of the use
REPLAY_MEMORY_SCORE_KEYS = (
    "ratio_to_oracle",
    "ratio_to_provisioned",
    "shortfall_pct",
    "shortfall_events",
    "deep_shortfall_events",
    "vms_short",
    "changes_per_vm_hour",
)


def used_clipped(series: MemorySeries) -> list[int | None]:
    """Each step's use, no more than provisioned: the few rows that report more are the monitor's glitches
    (``../shared/traces/README.md``); a VM cannot use memory it was not given."""
    return [None if u is None else min(u, p) for u, p in zip(series.used, series.provisioned, strict=True)]


@dataclass
class ReplayMemoryTally:
    """Sums over samples and VMs from which ``scores`` derives every figure."""

    samples: int = 0  # measured samples
    vm_seconds: float = 0.0  # every step, measured or not
    alloc_byte_s: float = 0.0
    oracle_byte_s: float = 0.0
    provisioned_byte_s: float = 0.0
    short: int = 0
    deep_short: int = 0
    vms: int = 0
    vms_short: int = 0
    changes: int = 0

    def add(self, series: MemorySeries, allocations: list[int]) -> None:
        """One VM's trace and the bytes it had at each step."""
        if len(allocations) != len(series.used):
            raise ValueError(f"{len(allocations)} allocations for {len(series.used)} steps of {series.name}")
        dt = series.step_s
        short = 0
        for alloc, used, prov in zip(allocations, used_clipped(series), series.provisioned, strict=True):
            if used is None:
                continue
            self.samples += 1
            self.alloc_byte_s += alloc * dt
            self.oracle_byte_s += used * dt
            self.provisioned_byte_s += prov * dt
            if alloc < used:
                short += 1
                self.deep_short += alloc < used * (1 - DEEP_SHORTFALL)
        self.short += short
        self.vms += 1
        self.vms_short += short > 0
        self.changes += sum(a != b for a, b in pairwise(allocations))
        self.vm_seconds += len(allocations) * dt

    def scores(self) -> dict[str, float]:
        """The scores named in ``REPLAY_MEMORY_SCORE_KEYS``; each 0 where its denominator is."""
        return {
            "ratio_to_oracle": self.alloc_byte_s / self.oracle_byte_s if self.oracle_byte_s else 0.0,
            "ratio_to_provisioned": self.alloc_byte_s / self.provisioned_byte_s if self.provisioned_byte_s else 0.0,
            "shortfall_pct": 100 * self.short / self.samples if self.samples else 0.0,
            "shortfall_events": float(self.short),
            "deep_shortfall_events": float(self.deep_short),
            "vms_short": float(self.vms_short),
            "changes_per_vm_hour": self.changes / (self.vm_seconds / 3600) if self.vm_seconds else 0.0,
        }
