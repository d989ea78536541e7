"""The ``qemu`` and ``libvirt`` sources' memory without a hypervisor: each source and its driver read the same
answers (QMP replies, libvirt stats and XML) into the same size and limits, which is what keeps the actuator from
refusing the decider's commands as ``stale-view``; the guest's figures (STAT line, balloon stats) become counters;
a VM without a memory device, or a QEMU that does not answer in time, gives no memory."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from services.actuator.drivers import qemu_memory
from services.actuator.drivers.base import DriverError
from services.actuator.drivers.libvirt_memory import LiveMemory, memory_view
from services.collector.sources import qemu as qemu_source
from services.collector.sources.base import MemoryCounters
from services.collector.sources.guest_memory import GUEST_PAGE_BYTES, qemu_counters
from services.collector.sources.libvirt import memory_counters
from shared.libvirt.domain import Settings
from shared.libvirt.memory import parse_memory
from shared.libvirt.memstats import from_memory_stats
from shared.messages import ErrorCode
from shared.qemu.memview import memory_sizes
from shared.qemu.vm import QemuVm, VmState, parse_stat
from shared.units import KIB, MIB
from tests.unit.test_libvirt_memory import BALLOON_ONLY, LIVE, PLAIN

STAT = (
    "STAT up=5.0 online=0 running=1 cpu0=10 hz=100 mem_total=900000 mem_avail=600000 swap_in=3 swap_out=1 psi_mem=2.5"
)
DEVICE = {
    "memdev": "/objects/vmem0mem",
    "block-size": 2 * MIB,
    "size": 256 * MIB,  # what the guest plugged: short of what was asked
    "requested-size": 512 * MIB,
    "max-size": 1024 * MIB,
    "id": "vmem0",
    "node": 0,
}


class FakeQmp:
    """Answers the memory queries as QEMU does; ``hang`` never answers (a QEMU busy elsewhere)."""

    def __init__(self, balloon_actual: int | None = None, hang: bool = False) -> None:
        self.balloon_actual = balloon_actual
        self.hang = hang
        self.asked: list[str] = []

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> object:
        self.asked.append(command)
        if self.hang:
            await asyncio.Event().wait()
        if command == "query-balloon":
            return {"actual": self.balloon_actual}
        if command == "query-memory-devices":
            return [{"type": "dimm", "data": {"id": "other"}}, {"type": "virtio-mem", "data": DEVICE}]
        raise AssertionError(f"unexpected {command}")


def vm_with_stat(tmp_path: Path, line: str = STAT) -> QemuVm:
    vm = QemuVm("mem1", tmp_path)
    vm.dir.mkdir(parents=True)
    vm.ctl_log.write_text(f"INIT-READY\n{line}\n")
    return vm


def state(**memory: Any) -> VmState:
    return VmState(name="mem1", pid=1, max_vcpus=2, boot_vcpus=1, maxcpus=32, memory_bytes=512 * MIB, **memory)


def same_sizes(counters: MemoryCounters | None, view: Any) -> bool:
    assert counters is not None
    return (counters.size_bytes, counters.min_bytes, counters.max_bytes) == (
        view.size_bytes,
        view.min_bytes,
        view.max_bytes,
    )


@pytest.mark.parametrize(
    ("layout", "actual", "expected"),
    [
        # virtio-mem: boot RAM plus what the device plugged, up to boot RAM plus its size
        ({"vmem_bytes": 1024 * MIB}, None, (768 * MIB, 512 * MIB, 1536 * MIB, 2 * MIB, "virtio-mem")),
        # with a balloon holding 64 MiB of boot RAM: the rest of boot RAM is the floor
        (
            {"vmem_bytes": 1024 * MIB, "balloon": True},
            448 * MIB,
            (704 * MIB, 448 * MIB, 1472 * MIB, 2 * MIB, "virtio-mem+balloon"),
        ),
        # the balloon alone: its actual, between the driver's floor (half of boot RAM) and boot RAM
        ({"balloon": True}, 384 * MIB, (384 * MIB, 256 * MIB, 512 * MIB, MIB, "balloon")),
    ],
)
async def test_the_qemu_source_and_driver_read_the_same_sizes(
    tmp_path: Path, layout: dict[str, Any], actual: int | None, expected: tuple[Any, ...]
) -> None:
    vm, s = vm_with_stat(tmp_path), state(**layout)
    view = await qemu_memory.read(FakeQmp(actual), vm, s)  # type: ignore[arg-type]
    sizes = await qemu_source.memory_sizes(FakeQmp(actual), vm.name, s)  # type: ignore[arg-type]
    counters = qemu_counters(sizes, vm.guest_stat())
    assert (view.size_bytes, view.min_bytes, view.max_bytes, view.step_bytes, view.method) == expected
    assert same_sizes(counters, view)
    # the guest's use is what the driver's below-used guard reads: MemTotal - MemAvailable
    assert counters is not None and counters.used_bytes == view.guest_used_bytes == 300000 * KIB


async def test_a_qemu_vm_without_a_memory_device_reports_no_memory_and_asks_qemu_nothing(tmp_path: Path) -> None:
    qmp = FakeQmp()
    assert await qemu_source.memory_sizes(qmp, "mem1", state()) is None  # type: ignore[arg-type]
    assert qmp.asked == []
    assert memory_sizes(state(), None, None) is None
    assert qemu_counters(None, parse_stat(STAT)) is None
    with pytest.raises(DriverError) as info:
        await qemu_memory.read(qmp, vm_with_stat(tmp_path), state())  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.HOTPLUG_DISABLED
    # a device state.json records that QEMU does not show: neither reads a size
    assert memory_sizes(state(vmem_bytes=1024 * MIB), None, None) is None


async def test_a_qemu_that_does_not_answer_leaves_memory_out_of_the_round(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu_source, "MEMORY_TIMEOUT_S", 0.05)
    qmp = FakeQmp(hang=True)
    got = await asyncio.wait_for(
        qemu_source.memory_sizes(qmp, "mem1", state(vmem_bytes=1024 * MIB)),  # type: ignore[arg-type]
        timeout=5,
    )
    assert got is None and qmp.asked == ["query-memory-devices"]


def test_the_stat_line_becomes_the_guests_counters() -> None:
    sizes = memory_sizes(state(vmem_bytes=1024 * MIB), None, DEVICE)
    counters = qemu_counters(sizes, parse_stat(STAT))
    assert counters == MemoryCounters(
        size_bytes=768 * MIB,
        min_bytes=512 * MIB,
        max_bytes=1536 * MIB,
        used_bytes=300000 * KIB,
        available_bytes=600000 * KIB,
        swap_in_bytes=3.0 * GUEST_PAGE_BYTES,  # pswpin counts pages
        psi_some_seconds=None,  # a line with avg10 only: no counter is made up from it
        oom_kills=None,
    )
    # a guest that says PSI memory's cumulative some total (microseconds): the counter the collector rates
    with_total = parse_stat(f"{STAT} psi_mem_total=2500000")
    assert with_total is not None and with_total.psi_memory_some_total_us == 2_500_000
    counted = qemu_counters(sizes, with_total)
    assert counted is not None and counted.psi_some_seconds == 2.5
    assert parse_stat(f"{STAT} psi_mem_total=x") is None  # malformed, as any other field
    # a guest too old to report memory: the sizes, and nothing of the guest's
    old = qemu_counters(sizes, parse_stat("STAT up=5.0 online=0 running=1 cpu0=10 hz=100"))
    assert old is not None and old.size_bytes == 768 * MIB
    assert (old.used_bytes, old.available_bytes, old.swap_in_bytes) == (None, None, None)
    assert qemu_counters(sizes, None) == MemoryCounters(size_bytes=768 * MIB, min_bytes=512 * MIB, max_bytes=1536 * MIB)


def test_the_stat_lines_oom_kill_count_becomes_the_guests_and_an_older_line_leaves_it_unmeasured() -> None:
    sizes = memory_sizes(state(vmem_bytes=1024 * MIB), None, DEVICE)
    for line, kills in ((f"{STAT} oom_kill=0", 0), (f"{STAT} oom_kill=3 psi_mem_total=5", 3), (STAT, None)):
        stat = parse_stat(line)
        assert stat is not None and stat.oom_kills == kills, line
        counters = qemu_counters(sizes, stat)
        assert counters is not None and counters.oom_kills == kills, line
    assert parse_stat(f"{STAT} oom_kill=x") is None  # malformed, as any other field


GUEST = {"available": 900000, "usable": 600000, "swap_in": 12}  # KiB, as the balloon's stats say


@pytest.mark.parametrize(
    ("xml", "actual_kib", "current_kib"),
    [
        (LIVE, 524288, 524288 + 131072),  # balloon.current: balloon actual + virtio-mem <current>
        (LIVE, 393216, 393216 + 131072),  # the balloon holds 128 MiB of boot RAM
        (BALLOON_ONLY, 786432, 786432),
    ],
)
def test_the_libvirt_source_and_driver_read_the_same_sizes(xml: str, actual_kib: int, current_kib: int) -> None:
    layout = parse_memory(xml)
    view = memory_view("mem 1", LiveMemory(layout, from_memory_stats({"actual": actual_kib, **GUEST}), Settings()))
    stats = {"vcpu.current": 1, "balloon.current": current_kib, "balloon.maximum": layout.memory_kib}
    counters = memory_counters(layout, stats | {f"balloon.{key}": value for key, value in GUEST.items()})
    assert same_sizes(counters, view)
    assert counters is not None
    assert (counters.used_bytes, counters.available_bytes) == (300000 * KIB, 600000 * KIB)
    assert counters.used_bytes == view.guest_used_bytes
    assert (counters.swap_in_bytes, counters.psi_some_seconds, counters.oom_kills) == (12 * KIB, None, None)
    # the project's test guest as a domain: its STAT line counts the OOM kills the balloon's stats do not
    guest = memory_counters(layout, stats | {"balloon.usable": 600000}, parse_stat(f"{STAT} oom_kill=2"))
    assert guest is not None and guest.oom_kills == 2


def test_libvirt_memory_is_none_without_a_device_a_layout_or_a_size() -> None:
    stats = {"balloon.current": 262144}
    assert memory_counters(parse_memory(PLAIN), stats) is None  # neither virtio-mem nor a balloon
    assert memory_counters(None, stats) is None  # its XML could not be read
    assert memory_counters(parse_memory(LIVE), {"vcpu.current": 1}) is None  # libvirt gave no balloon.current
    # the guest's figures are absent until its balloon driver sends them: sizes only
    bare = memory_counters(parse_memory(LIVE), {"balloon.current": 655360})
    assert bare == MemoryCounters(size_bytes=640 * MIB, min_bytes=256 * MIB, max_bytes=2560 * MIB)
