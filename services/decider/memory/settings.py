"""The memory rule's parameters, each with the reason for its default (``docs/memory.md``, "The rule").

``headroom`` is the one knob that trades memory for safety, as ``default.target_unmet_pct`` does for CPU: the share
of the used memory kept spare above it. Its default was chosen on half "a" of the Bitbrains memory traces and
checked on half "b" (``evaluation.memory_replay``); the other values are set by reasoning, not fitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import msgspec

from shared.errors import UsageError
from shared.units import MIB

_Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
_Seconds = Annotated[float, msgspec.Meta(ge=0)]
_Rate = Annotated[float, msgspec.Meta(ge=0)]


class MemorySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How much spare memory a VM keeps, how fast it gets more and how slowly it gives some back."""

    # Spare memory kept above the used memory, as a share of it: the size aimed at is used × (1 + headroom) + floor.
    # It must cover what the guest can add between two samples, since nothing is seen in between (5 minutes on the
    # traces). More is safer and dearer; this is the knob a sweep moves. 0.25 is the least that left at most 0.1 %
    # of VM-samples short on half "a" (a criterion set before the sweep); 0.1 left 0.11 %.
    headroom: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.25
    # Spare memory added to every target whatever the use: a small guest's page cache and a burst of a few tens of
    # MiB (a process starting) are not proportional to its use. 128 MiB is also Linux's memory block, the unit in
    # which hot-added memory comes online. On half "a" it cost 1 % more than 32 MiB and left 4 fewer VMs short.
    floor_bytes: Annotated[int, msgspec.Meta(ge=0)] = 128 * MIB
    # Grow when the spare (size − used) falls below this share of the spare the headroom asks for. Below 1 the rule
    # does not grow for every MiB that used rises (each grow is an actuation); 0.5 still leaves half the headroom.
    # The rise reserve (``rise_memory_s``) is not shared out so: a spare below the whole rise grows, since the next
    # sample may bring that rise again (``MemoryPolicy.grow_below``).
    grow_trigger: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    # On pressure or swapping, grow to at least this much more than the size now (1: double it): used (MemTotal −
    # MemAvailable) no longer shows what the guest wants once it swaps, so the target from used alone is too small,
    # and a shortfall kills work. Doubling reaches any size in a few samples, as TCP's slow start does.
    pressure_grow: Annotated[float, msgspec.Meta(ge=0, le=10)] = 1.0
    # Bytes swapped in per second above which the guest is short of memory. Not 0: a guest pages in stale swap now
    # and then without any shortage; 10 pages/s (40 KiB/s) sustained over a sample is a working set that does not fit.
    swap_in_bytes_per_s: _Rate = 40960.0
    # PSI memory "some" (the share of the interval some task stalled on memory) above which the guest is short of
    # memory. An idle guest reads 0; systemd-oomd's default kills at 60 % (oomd.conf ``DefaultMemoryPressureLimit``):
    # growing at 10 % acts well before that.
    psi_some: _Fraction = 0.10
    # The evidence a shrink needs: the used memory's maximum over this many samples, which must also be free of
    # pressure and swapping. Counted in samples, not seconds, because a mistaken shrink costs a shortfall until the
    # next sample shows it and the grow lands: at the traces' 5-minute samples that is minutes of harm per mistake,
    # and a day's evidence (288 samples) covers the daily jobs (backups, batch runs, reports) a shorter window
    # shrinks into; at a live collector's 1-second samples a rise is seen and met within a second or two, and 288
    # samples (under 5 minutes) is as many observations of the guest. On half "a" of the Bitbrains traces, 12
    # samples (1 h) left 0.8 % of VM-samples short, 72 (6 h) 0.3 %, 288 (24 h) 0.08 %, for 2.7, 3.9 and 5.8 × the
    # oracle's memory. The second knob of the trade-off.
    window_samples: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 288
    # How long the largest rise from one sample to the next is remembered. A shrink keeps at least that rise spare
    # above what the guest uses now: memory that arrives faster than a sample shows it and a grow lands (a notebook
    # cell loading a dataframe, a model server's KV cache in a burst) must already be there, or the guest swaps and
    # can be killed. A day, as the traces' window, so a daily burst is remembered until it comes again.
    rise_memory_s: _Seconds = 86400.0
    # At least this long between a change and the next shrink: a give-back migrates pages (1-1.5 s per GiB measured)
    # and one that follows a grow closely is a flap.
    shrink_interval_s: _Seconds = 1800.0
    # A shrink gives back at most this share of the size now: a mistaken shrink is then small, and the next one
    # waits ``shrink_interval_s`` with fresh evidence.
    max_shrink_fraction: _Fraction = 0.25
    # A shrink that frees less than this share of the size is not made: it would cost an actuation and a page
    # migration for nothing worth having.
    min_shrink_fraction: _Fraction = 0.05

    def __post_init__(self) -> None:
        if self.max_shrink_fraction < self.min_shrink_fraction:
            raise ValueError(
                f"memory.max_shrink_fraction ({self.max_shrink_fraction}) is below memory.min_shrink_fraction "
                f"({self.min_shrink_fraction}): no shrink could ever be made"
            )


class MemorySettingsError(UsageError):
    """A memory setting that does not fit (``--param memory.KEY=VALUE``, a config file)."""


def memory_settings(params: Mapping[str, object] | None = None) -> MemorySettings:
    """The settings from ``params`` (text is read as numbers), each checked against its bounds; unknown keys are
    refused. Constructing ``MemorySettings`` directly skips the bounds: use this for anything a person wrote."""
    try:
        return msgspec.convert(dict(params or {}), MemorySettings, strict=False)
    except (msgspec.ValidationError, ValueError) as exc:
        raise MemorySettingsError(f"bad memory setting: {exc}") from exc
