"""A QEMU test guest's memory sizes as its driver and its collector source both read them: one pure function
(:func:`memory_sizes`) from the VM's recorded layout (state.json) and what QEMU says of its devices, and the QMP
queries that feed it (:func:`query_sizes`), so the size the collector reports is the very size the actuator checks
a command's ``seen_memory_bytes`` against (docs/memory.md, "Through the loop").

virtio-mem: the VM's size is boot RAM less what the balloon holds plus what the device plugged (its ``size`` from
``query-memory-devices``, the guest's truth, which lags ``requested-size``). Balloon only: boot RAM less what the
balloon holds (``query-balloon`` ``actual``), between a floor the driver keeps (a balloon has none) and boot RAM.

What a running guest holds of its host's memory (:func:`committed_bytes`) is the larger of its size and the size last
asked for, its boot RAM without a memory device: the collector's host reading and the driver's host view both count
it so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from qemu.qmp import QMPClient, QMPError

from shared.qemu.memory import VMEM_ID
from shared.qemu.vm import VmState
from shared.units import MIB, align_up

BALLOON_STEP_BYTES = MIB
# The balloon's floor: at least this, and at least half of boot RAM. A balloon inflated towards nothing OOM-kills
# the guest's own agent (docs/hypervisors/qemu.md, Memory); it is meant for trims, virtio-mem for size.
BALLOON_MIN_BYTES = 128 * MIB

# What a late or malformed answer to :func:`query_sizes` raises under ``asyncio.wait_for``: the memory is then not
# known this time, and the caller goes on without it.
UNREADABLE: tuple[type[Exception], ...] = (TimeoutError, QMPError, KeyError, TypeError, ValueError)


@dataclass(frozen=True)
class MemorySizes:
    """A VM's memory as QEMU reports it now, in bytes (the hypervisor's half of the driver's ``MemoryView``)."""

    size_bytes: int
    requested_bytes: int
    min_bytes: int
    max_bytes: int
    step_bytes: int
    method: str


def balloon_floor(boot_bytes: int) -> int:
    return align_up(max(BALLOON_MIN_BYTES, boot_bytes // 2), BALLOON_STEP_BYTES)


def has_memory_device(state: VmState) -> bool:
    """Whether the VM was started with virtio-mem or a balloon (0/False in a state.json of an older version)."""
    return bool(state.vmem_bytes or state.balloon)


def memory_sizes(state: VmState, balloon_actual: int | None, device: Mapping[str, Any] | None) -> MemorySizes | None:
    """The sizes from the VM's layout, the balloon's ``actual`` (None: no balloon) and the virtio-mem device's
    ``query-memory-devices`` data (None: no device). None for a VM that cannot move memory, or whose recorded
    virtio-mem device QEMU does not show. Pure."""
    if not has_memory_device(state):
        return None
    boot = state.memory_bytes
    kept = balloon_actual if state.balloon and balloon_actual is not None else boot  # boot RAM the balloon leaves
    balloon_requested = state.balloon_target_bytes or boot
    if state.vmem_bytes:
        if device is None:
            return None
        return MemorySizes(
            size_bytes=kept + int(device["size"]),
            requested_bytes=balloon_requested + int(device["requested-size"]),
            min_bytes=kept,
            max_bytes=kept + int(device["max-size"]),
            step_bytes=int(device["block-size"]),
            method="virtio-mem+balloon" if state.balloon else "virtio-mem",
        )
    return MemorySizes(
        size_bytes=kept,
        requested_bytes=balloon_requested,
        min_bytes=balloon_floor(boot),
        max_bytes=boot,
        step_bytes=BALLOON_STEP_BYTES,
        method="balloon",
    )


def committed_bytes(state: VmState, sizes: MemorySizes | None) -> int | None:
    """What a running guest holds of the host's memory: the larger of its size and the size last asked for (a move
    under way will land), its boot RAM without a memory device; None when unknown (QEMU did not answer for its
    device, or its state file does not record its memory). Pure."""
    if sizes is not None:
        return max(sizes.size_bytes, sizes.requested_bytes)
    if not has_memory_device(state):
        return state.memory_bytes or None
    return None


def virtio_mem_device(devices: object) -> dict[str, Any] | None:
    """The project's virtio-mem device (``vmem0``) in a ``query-memory-devices`` answer, or None."""
    for device in cast(list[dict[str, Any]], devices):
        if device.get("type") == "virtio-mem" and device.get("data", {}).get("id") == VMEM_ID:
            return cast(dict[str, Any], device["data"])
    return None


async def query_sizes(qmp: QMPClient, state: VmState) -> MemorySizes | None:
    """:func:`memory_sizes` from QEMU now: ``query-balloon`` and ``query-memory-devices`` on ``qmp`` (either
    monitor), only for what the VM has; None as there."""
    if not has_memory_device(state):
        return None
    actual = None
    if state.balloon:
        actual = int(cast(dict[str, Any], await qmp.execute("query-balloon"))["actual"])
    device = virtio_mem_device(await qmp.execute("query-memory-devices")) if state.vmem_bytes else None
    return memory_sizes(state, actual, device)
