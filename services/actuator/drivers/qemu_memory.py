"""The ``qemu`` driver's memory: a guest's virtio-mem device sizes it, its balloon trims boot RAM where there is no
virtio-mem (docs/hypervisors/qemu.md, Memory).

virtio-mem: ``qom-set /machine/peripheral/vmem0 requested-size``; the truth is the device's ``size`` (what the guest
really plugged, from ``query-memory-devices``), which lags the request and may stop short of it (pinned pages).
The VM's size is boot RAM less what the balloon holds plus what virtio-mem plugged. The balloon: QMP ``balloon``
and ``query-balloon``; it only moves within boot RAM and has no floor of its own, so the driver keeps one
(``balloon_floor``). The layout (boot RAM, device size, balloon or not) is the VM's state.json: QEMU cannot say
whether a VM has a balloon without trying it.

A virtio-mem shrink that would leave the guest less free memory than a margin is refused with ``below-used`` before
QEMU is asked: virtio-mem migrates used pages out and does not stop at a watermark, so it OOM-kills guest work or
panics the guest. Headroom above that is the caller's. The guard is reckoned in quantities that do not lag a move:
the guest's use (MemTotal − MemAvailable of its latest STAT line, less what the balloon holds,
which deflate-on-oom counts as used; the driver never moves the balloon of a VM with virtio-mem) and what its
kernel keeps for itself (boot RAM − MemTotal in its first STAT line). MemAvailable alone would lag: the STAT line
comes once a second, so right after a grow it still shows the old size and refuses a give-back of what was just
plugged. A balloon needs no such guard: it is ``deflate-on-oom`` (it gives pages back rather than let the guest
kill), and its floor keeps it to trims. Its hold cannot be told from the guest's use in one STAT line either (the
guest counts it as used), so a guard would refuse a trim right after a deflate.
"""

from __future__ import annotations

import asyncio

from qemu.qmp import QMPClient

from services.actuator.drivers.base import DriverError, MemoryView
from shared.messages import ErrorCode
from shared.qemu.memory import VMEM_ID
from shared.qemu.memview import BALLOON_MIN_BYTES, BALLOON_STEP_BYTES, balloon_floor, query_sizes
from shared.qemu.vm import QemuVm, VmState
from shared.units import MIB, align_up, format_size

__all__ = ["BALLOON_MIN_BYTES", "BALLOON_STEP_BYTES", "SHRINK_MARGIN_BYTES", "balloon_floor", "read", "resize"]

# What a shrink must leave the guest beyond what it uses: the kernel needs free pages to move used ones out of the
# blocks it gives back (the memmap of the blocks that stay, page tables, slab).
SHRINK_MARGIN_BYTES = 64 * MIB


def _disabled(vm: str) -> DriverError:
    return DriverError(
        ErrorCode.HOTPLUG_DISABLED,
        f"QEMU VM {vm} was started without a memory device: start it with a maximum memory (virtio-mem; "
        "hotplug qemu start --max-memory SIZE) or a balloon (--balloon)",
    )


def check_enabled(vm: str, state: VmState) -> None:
    """HOTPLUG_DISABLED unless the VM was started with virtio-mem or a balloon (before any QMP is spent on it)."""
    if not state.vmem_bytes and not state.balloon:
        raise _disabled(vm)


async def read(qmp: QMPClient, vm: QemuVm, state: VmState) -> MemoryView:
    """The VM's memory now: QEMU's devices (``shared.qemu.memview``, as the collector's ``qemu`` source reads them),
    and the guest's own MemTotal/MemAvailable from its latest STAT line."""
    check_enabled(vm.name, state)
    sizes = await query_sizes(qmp, state)
    if sizes is None:  # recorded in state.json, yet QEMU shows no such device
        raise DriverError(ErrorCode.HOTPLUG_DISABLED, f"QEMU VM {vm.name} has no virtio-mem device {VMEM_ID}")
    stat = await asyncio.to_thread(vm.guest_stat)
    return MemoryView(
        vm=vm.name,
        size_bytes=sizes.size_bytes,
        requested_bytes=sizes.requested_bytes,
        min_bytes=sizes.min_bytes,
        max_bytes=sizes.max_bytes,
        step_bytes=sizes.step_bytes,
        method=sizes.method,
        guest_total_bytes=stat.mem_total_bytes if stat else None,
        guest_available_bytes=stat.mem_available_bytes if stat else None,
    )


async def _free_after(vm: QemuVm, state: VmState, view: MemoryView, target: int) -> int | None:
    """What the guest would have free at ``target`` (bytes), or None when it has not reported its memory."""
    first = await asyncio.to_thread(vm.first_guest_stat)
    used = view.guest_used_bytes
    if first is None or first.mem_total_bytes is None or used is None:
        return None
    kernel = max(0, state.memory_bytes - first.mem_total_bytes)  # never in MemTotal: memmap, kernel image, ...
    kept = view.size_bytes if view.method == "balloon" else view.min_bytes  # boot RAM the balloon leaves
    return target - kernel - max(0, used - (state.memory_bytes - kept))


async def resize(qmp: QMPClient, vm: QemuVm, state: VmState, target_bytes: int) -> None:
    """Ask for ``target_bytes`` (rounded up to the device's step: the guest never gets less than asked); back once
    QEMU took the request."""
    view = await read(qmp, vm, state)
    target = align_up(target_bytes, view.step_bytes)
    if not view.min_bytes <= target <= view.max_bytes:
        raise DriverError(
            ErrorCode.OUT_OF_BOUNDS,
            f"{vm.name}: {format_size(target_bytes)} is outside what its {view.method} can give: "
            f"{format_size(view.min_bytes)} to {format_size(view.max_bytes)}",
        )
    if target < view.size_bytes and state.vmem_bytes:
        free_after = await _free_after(vm, state, view, target)
        if free_after is not None and free_after < SHRINK_MARGIN_BYTES:
            raise DriverError(
                ErrorCode.BELOW_USED,
                f"{vm.name}: {format_size(target)} would leave its guest {format_size(max(0, free_after))} "
                f"beyond what it uses; it needs {format_size(SHRINK_MARGIN_BYTES)} to spare",
            )
    if state.vmem_bytes:
        requested = target - view.min_bytes
        await qmp.execute(
            "qom-set", {"path": f"/machine/peripheral/{VMEM_ID}", "property": "requested-size", "value": requested}
        )
        return

    def remember(s: VmState) -> None:
        s.balloon_target_bytes = target

    # remembered first: QEMU reports only where the balloon is, and a request it took must not be forgotten
    await asyncio.to_thread(vm.update_state, remember)
    await qmp.execute("balloon", {"value": target})
