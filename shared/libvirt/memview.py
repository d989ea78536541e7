"""A libvirt domain's memory sizes as the ``libvirt`` driver and the ``libvirt`` collector source both report them:
one pure function (:func:`memory_sizes`) from the domain's memory layout (its XML, ``shared.libvirt.memory``) and
what the guest has now, so the size the collector samples is the size the actuator checks a command's
``seen_memory_bytes`` against (docs/memory.md, "Through the loop").

What the guest has is balloon actual (boot RAM without a balloon) plus virtio-mem ``<current>``. libvirt gives it
two ways: the driver adds ``memoryStats()['actual']`` (a monitor call, which waits behind a running job) to the live
XML's ``<current>`` (:func:`guest_size`); the source, which must not wait, reads ``balloon.current`` of the NOWAIT
domain stats, libvirt's own sum of the same two (shared/docs/memory.md §5). That sum follows QEMU's rate-limited
events (≤ 1 s late), as ``<current>`` does, where ``actual`` is read live: the two agree once a move has settled,
but a sample taken within a second after a balloon move may still show the balloon's part before it. The limits and
the step come from the layout alone, which does not change while the domain runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.libvirt.memory import DomainMemory
from shared.units import KIB, MIB, align_up

# Measured: a balloon at 384 MiB of 512 MiB boot RAM left the test guest working; at 128 MiB the OOM killer took
# init's helpers (memory.md trap 5). 256 MiB keeps a small Linux guest alive; big guests keep a quarter.
BALLOON_FLOOR_BYTES = 256 * MIB
BALLOON_FLOOR_SHARE = 4


@dataclass(frozen=True)
class MemorySizes:
    """A domain's memory now, in bytes: what the guest has and the limits within which it can move."""

    size_bytes: int
    min_bytes: int  # the balloon's floor, or boot RAM without a balloon
    max_bytes: int  # boot RAM plus the virtio-mem device's size
    step_bytes: int  # the device's block; 1 MiB for a balloon alone
    method: str  # "virtio-mem", "balloon" or "virtio-mem+balloon"


def balloon_floor(boot_bytes: int, step_bytes: int) -> int:
    return min(boot_bytes, align_up(max(BALLOON_FLOOR_BYTES, boot_bytes // BALLOON_FLOOR_SHARE), step_bytes))


def guest_size(layout: DomainMemory, balloon_actual_bytes: int | None) -> int:
    """What the guest has from the balloon's actual (None: not known, read as boot RAM) and the live XML's
    virtio-mem ``<current>``. Pure."""
    boot = layout.boot_kib * KIB
    actual = balloon_actual_bytes if layout.has_balloon and balloon_actual_bytes is not None else boot
    device = layout.virtio_mem
    return actual + ((device.current_kib or 0) * KIB if device is not None else 0)


def memory_sizes(layout: DomainMemory, size_bytes: int) -> MemorySizes | None:
    """The domain's sizes, given what the guest has (``size_bytes``); None for a domain with neither a virtio-mem
    device nor a balloon. Pure."""
    device = layout.virtio_mem
    if device is None and not layout.has_balloon:
        return None
    boot = layout.boot_kib * KIB
    step = device.block_kib * KIB if device is not None else MIB
    if device is not None and layout.has_balloon:
        method = "virtio-mem+balloon"
    else:
        method = "virtio-mem" if device is not None else "balloon"
    return MemorySizes(
        size_bytes=size_bytes,
        min_bytes=balloon_floor(boot, step) if layout.has_balloon else boot,
        max_bytes=boot + (device.size_kib * KIB if device is not None else 0),
        step_bytes=step,
        method=method,
    )
