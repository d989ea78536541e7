"""The project's test guest itself, on real QEMU (TCG): its control channel takes a long command whole and
acknowledges it, and its STAT line counts the guest's OOM kills, which the ``qemu`` source passes on.

One small guest for the module: 256 MiB of boot RAM, no swap, and a virtio-mem device with nothing plugged (the
``qemu`` source reports memory only for a VM with a memory device). Needs what ``test_qemu.py`` needs; skipped
outside CI only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotplug.harness.poll import eventually, wait_until
from services.collector.sources.base import MemoryCounters
from services.collector.sources.qemu import QemuSource
from shared.clock import Clock
from shared.qemu.image import GuestImage
from shared.qemu.vm import QemuVm
from tests.system.test_qemu import guest_says, image  # noqa: F401 (image: the guest image fixture, shared)

pytestmark = pytest.mark.external  # needs a tool from the OS
# Under `-n` (bin/test) this module is in xdist group "qemu" with the other QEMU modules: see XDIST_GROUPS.

VM = "g1"
OOM_EXIT = 137  # 128 + SIGKILL, the OOM killer's signal


@pytest.fixture(scope="module")
def guest(image: GuestImage) -> Iterator[QemuVm]:  # noqa: F811 (image is the imported fixture)
    # unix socket paths must stay short: not under pytest's deep tmp_path
    root = Path(f"/tmp/hq-guest-{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    vm = QemuVm.start(VM, image, max_vcpus=1, memory_mb=256, max_memory_mb=512, root=root)
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
