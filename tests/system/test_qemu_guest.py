"""The project's test guest itself, on real QEMU (TCG): its control channel takes a long command whole and
acknowledges it, also right after its background loops are stopped, and its STAT line counts the guest's OOM
kills, which the ``qemu`` source passes on.

One small guest for the module: 256 MiB of boot RAM, no swap, and a virtio-mem device with nothing plugged (the
``qemu`` source reports memory only for a VM with a memory device). Needs what ``test_qemu.py`` needs; skipped
outside CI only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotplug.harness.poll import eventually, wait_until
from services.actuator.drivers.qemu import QemuDriver
from services.collector.sources.base import MemoryCounters
from services.collector.sources.qemu import QemuSource
from shared.clock import Clock
from shared.qemu.image import GuestImage
from shared.qemu.vm import QemuVm
from shared.units import MIB
from tests.system.test_qemu import guest_says, image  # noqa: F401 (image: the guest image fixture, shared)

pytestmark = pytest.mark.external  # needs a tool from the OS
# Under `-n` (bin/test) this module is in xdist group "qemu" with the other QEMU modules: see XDIST_GROUPS.

VM = "g1"
BOOT_MB = 256
OOM_EXIT = 137  # 128 + SIGKILL, the OOM killer's signal


@pytest.fixture(scope="module")
def guest(image: GuestImage) -> Iterator[QemuVm]:  # noqa: F811 (image is the imported fixture)
    # unix socket paths must stay short: not under pytest's deep tmp_path
    root = Path(f"/tmp/hq-guest-{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    vm = QemuVm.start(VM, image, max_vcpus=1, memory_mb=BOOT_MB, max_memory_mb=BOOT_MB * 2, root=root)
    try:
        yield vm
    finally:
        vm.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_300_character_command_reaches_the_guest_whole_and_is_acknowledged(guest: QemuVm) -> None:
    """Its ``GOT`` line alone is longer than QEMU writes to a control connection nobody reads (278 one-byte writes
    on a unix socket): acknowledged only because the host reads the connection as it waits (``send_line``)."""
    word = "x" * 290
    command = f"echo {word} | tr x y"
    assert len(command) >= 300
    assert guest_says(guest, command) == "y" * len(word)


async def test_the_guests_loops_stop_when_told_and_the_next_command_arrives_whole(guest: QemuVm) -> None:
    """``busy`` and ``memwatch`` run loops beside the command loop. Stopping them reaps them before the next command
    is read (busybox's read, cut by a child's SIGCHLD, throws away what it had read of the line), and ``busy`` does
    not forget the watcher: after ``memwatch off``, a MemTotal change (128 MiB plugged) makes no ``MEM`` line."""
    word = "z" * 200
    mark = guest.guest_log_size()
    for step in ("memwatch on", "busy 1", "busy 0", "memwatch off"):
        assert await asyncio.to_thread(guest_says, guest, step) == step
        # Whole: the guest's own acknowledgement repeats the line it read (send returns on that line, exactly).
        # Not its echo's OUT line: in two loaded fresh-clone runs that line came back with one byte too many while
        # the acknowledgement was exact (the output path, not the command's arrival; its cause is not found yet).
        sent = guest.guest_log_size()
        await asyncio.to_thread(guest.send, f"echo {word}")
        assert f"GOT echo {word}" in guest.guest_lines_since(sent)
        await eventually(  # its output, before the next step's command
            lambda sent=sent: any(line.startswith("OUT z") for line in guest.guest_lines_since(sent)),
            timeout=60,
            interval=0.05,
            what="the echo's output",
        )
    assert any(line.startswith("MEM total=") for line in guest.guest_lines_since(mark))  # it did watch
    stat = guest.guest_stat()
    assert stat is not None and stat.mem_total_kb is not None
    boot_total_kb = stat.mem_total_kb
    mark = guest.guest_log_size()
    driver = QemuDriver(guest.root)

    def total_kb() -> int | None:
        now = guest.guest_stat()
        return now.mem_total_kb if now is not None else None

    await driver.resize_memory(VM, (BOOT_MB + 128) * MIB)
    try:
        await eventually(
            lambda: (total_kb() or 0) > boot_total_kb, timeout=60, interval=0.2, what="the guest's MemTotal up"
        )
        assert [line for line in guest.guest_lines_since(mark) if line.startswith("MEM ")] == []
    finally:
        await driver.resize_memory(VM, BOOT_MB * MIB)
        await eventually(lambda: total_kb() == boot_total_kb, timeout=60, interval=0.2, what="MemTotal back down")


async def test_an_oom_kill_in_the_guest_is_counted_and_reaches_the_qemu_sources_memory(guest: QemuVm) -> None:
    """The count reads 0 at first (measured, not None). Then a dd's buffer a little smaller than the guest's MemTotal
    (so it is allocated: the kernel's overcommit guess admits it) is filled, more than the guest has with no swap:
    the OOM killer takes the dd, the only process it may (the guest's agent runs at oom_score_adj -1000), and the
    count, in the STAT line and in the ``qemu`` source's memory, is 1."""
    source = QemuSource(Clock(), guest.root)

    async def memory() -> MemoryCounters | None:
        reading = next((r for r in await source.read() if r.vm == VM), None)
        return reading.memory if reading is not None else None

    counted: list[int | None] = []

    async def oom_kills_read(at_least: int) -> bool:
        now = await memory()
        counted.append(now.oom_kills if now is not None else None)
        return counted[-1] is not None and counted[-1] >= at_least

    await eventually(lambda: oom_kills_read(0), timeout=30, interval=0.5, what="an OOM count in the source's memory")
    assert counted[-1] == 0
    mark = guest.guest_log_size()
    total_mib = "$(( $(awk '/^MemTotal:/{print $2}' /proc/meminfo) / 1024 - 8 ))"
    guest.send(f"dd if=/dev/zero of=/dev/null bs={total_mib}M count=1 2>/dev/null; echo dd $?")

    def dd_ended() -> list[str]:
        return [line.strip() for line in guest.guest_lines_since(mark) if line.startswith("OUT dd ")]

    assert wait_until(lambda: bool(dd_ended()), 120, 0.2), "the guest's dd never ended"
    assert dd_ended() == [f"OUT dd {OOM_EXIT}"]  # killed, not refused its memory ("dd 1") nor done ("dd 0")
    await eventually(lambda: oom_kills_read(1), timeout=30, interval=0.5, what="the OOM kill in the source's memory")
    assert counted[-1] == 1
    stat = guest.guest_stat()
    assert stat is not None and stat.oom_kills == 1
    assert "Killed process" in guest.console_log.read_text(errors="replace")
