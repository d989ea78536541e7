"""Real guest memory on real QEMU guests (TCG): virtio-mem grows and gives back, the balloon trims, through the
``qemu`` driver, judged by the guest's own MemTotal and MemAvailable (its STAT lines); the ``qemu`` collector source
reads the size the driver reads.

Two guests for the whole module (a boot costs seconds of CPU): one with 512 MiB of boot RAM and a virtio-mem device
of 1 GiB, one with 512 MiB and only a balloon. The tests on the first leave it as they found it (nothing plugged,
nothing held). Needs what ``test_qemu.py`` needs; skipped outside CI only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotplug.harness.poll import eventually, wait_until
from services.actuator.drivers.base import DriverError, MemoryView
from services.actuator.drivers.qemu import QemuDriver
from services.actuator.drivers.qemu_memory import SHRINK_MARGIN_BYTES
from services.collector.rates import sample_from
from services.collector.sources.base import Reading
from services.collector.sources.qemu import QemuSource
from shared.clock import Clock
from shared.host_memory import read_host_memory
from shared.messages import ErrorCode
from shared.qemu.image import GuestImage
from shared.qemu.vm import QemuVm, VmState
from shared.units import KIB, MIB
from tests.system.test_qemu import guest_says, image  # noqa: F401 (image: the guest image fixture, shared)

pytestmark = pytest.mark.external  # needs a tool from the OS
# Under `-n` (bin/test) this module is in xdist group "qemu" with test_qemu.py: see XDIST_GROUPS in tests/conftest.py.

BOOT_MB = 512
MAX_MB = 1536
GROW = 512 * MIB
# A TCG guest on a shared 2-core machine: moving 512 MiB took 0.2 s (grow) and 4 s (give back, 128 MiB held) alone.
MOVE_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    # unix socket paths must stay short: not under pytest's deep tmp_path
    path = Path(f"/tmp/hq-mem-{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    yield path
    for d in path.glob("*"):
        QemuVm(d.name, path).stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def vmem(image: GuestImage, root: Path) -> QemuVm:  # noqa: F811 (image is the imported fixture)
    return QemuVm.start("mem1", image, max_vcpus=1, memory_mb=BOOT_MB, max_memory_mb=MAX_MB, root=root)


@pytest.fixture(scope="module")
def boot_total_kb(vmem: QemuVm) -> int:
    """The virtio-mem guest's MemTotal with nothing plugged, as it reported it after booting."""
    if not wait_until(lambda: guest_total_kb(vmem) is not None, 30, 0.1):
        raise AssertionError("the guest never reported its MemTotal")
    total = guest_total_kb(vmem)
    assert total is not None
    return total


@pytest.fixture(scope="module")
def ballooned(image: GuestImage, root: Path) -> QemuVm:  # noqa: F811
    return QemuVm.start("bal1", image, max_vcpus=1, memory_mb=BOOT_MB, balloon=True, root=root)


def guest_total_kb(vm: QemuVm) -> int | None:
    stat = vm.guest_stat()
    return stat.mem_total_kb if stat else None


def guest_available_kb(vm: QemuVm) -> int | None:
    stat = vm.guest_stat()
    return stat.mem_available_kb if stat else None


async def holder_pid(vm: QemuVm) -> str:
    """The pid of the guest's ``dd`` holding memory, once it runs."""
    seen: list[str] = []

    async def running() -> bool:
        seen.append(await asyncio.to_thread(guest_says, vm, "pidof dd || echo none"))
        return seen[-1].isdigit()

    await eventually(running, timeout=30, interval=0.5, what="the guest's dd holding memory")
    return seen[-1]


def hold(vm: QemuVm, mib: int) -> None:
    """``mib`` MiB of anonymous memory in the guest, held by dd blocked on a pipe nobody reads."""
    guest_says(vm, f"(dd if=/dev/zero bs={mib}M count=1 | sleep 3600) >/dev/null 2>&1 & echo holding")


def release(vm: QemuVm) -> None:
    guest_says(vm, "kill $(pidof dd); echo released")


async def settle(driver: QemuDriver, vm: str, size: int) -> MemoryView:
    """The driver's view once QEMU says the guest has ``size`` bytes."""
    views: list[MemoryView] = []

    async def there() -> bool:
        views.append(await driver.read_memory(vm))
        return views[-1].size_bytes == size

    await eventually(there, timeout=MOVE_TIMEOUT_S, interval=0.05, what=f"{vm} at {size // MIB} MiB")
    return views[-1]


async def test_virtio_mem_grows_the_guest_by_what_it_plugged(vmem: QemuVm, boot_total_kb: int, root: Path) -> None:
    driver = QemuDriver(root)
    before = await driver.read_memory("mem1")
    assert (before.size_bytes, before.min_bytes, before.max_bytes) == (BOOT_MB * MIB, BOOT_MB * MIB, MAX_MB * MIB)
    assert (before.method, before.step_bytes) == ("virtio-mem", 2 * MIB)
    total = boot_total_kb
    await driver.resize_memory("mem1", BOOT_MB * MIB + GROW)
    view = await settle(driver, "mem1", BOOT_MB * MIB + GROW)
    assert view.requested_bytes == BOOT_MB * MIB + GROW
    # the guest itself sees exactly what was plugged (blocks online in ZONE_MOVABLE, no onliner needed)
    await eventually(
        lambda: guest_total_kb(vmem) == total + GROW // KIB, timeout=30, what="the guest's MemTotal up by 512 MiB"
    )
    after = await driver.read_memory("mem1")
    assert after.guest_total_bytes == (total * KIB) + GROW
    assert after.guest_available_bytes is not None and after.guest_available_bytes > GROW
    await driver.resize_memory("mem1", BOOT_MB * MIB)
    await settle(driver, "mem1", BOOT_MB * MIB)
    await eventually(lambda: guest_total_kb(vmem) == total, timeout=30, what="the guest's MemTotal back down")


async def test_giving_memory_back_keeps_the_guests_work(vmem: QemuVm, boot_total_kb: int, root: Path) -> None:
    driver = QemuDriver(root)
    total = boot_total_kb
    await driver.resize_memory("mem1", BOOT_MB * MIB + GROW)
    await settle(driver, "mem1", BOOT_MB * MIB + GROW)
    await eventually(lambda: guest_total_kb(vmem) == total + GROW // KIB, timeout=30, what="the grown MemTotal")
    await asyncio.to_thread(hold, vmem, 96)  # it must survive the shrink: its pages move, it is not killed
    holder = await holder_pid(vmem)
    try:
        await driver.resize_memory("mem1", BOOT_MB * MIB)
        view = await settle(driver, "mem1", BOOT_MB * MIB)
        assert view.requested_bytes == BOOT_MB * MIB
        await eventually(lambda: guest_total_kb(vmem) == total, timeout=30, what="the guest's MemTotal back down")
        assert await asyncio.to_thread(guest_says, vmem, "pidof dd || echo none") == holder  # moved, not killed
        assert "Out of memory" not in vmem.console_log.read_text(errors="replace")
    finally:
        await asyncio.to_thread(release, vmem)


async def test_a_request_past_the_devices_limits_is_out_of_bounds(vmem: QemuVm, root: Path) -> None:
    driver = QemuDriver(root)
    for target in (MAX_MB * MIB + 2 * MIB, BOOT_MB * MIB - 2 * MIB):
        with pytest.raises(DriverError) as info:
            await driver.resize_memory("mem1", target)
        assert info.value.code is ErrorCode.OUT_OF_BOUNDS
        assert "512MiB to 1.5GiB" in info.value.message, info.value.message
    assert (await driver.read_memory("mem1")).requested_bytes == BOOT_MB * MIB  # QEMU was not asked


async def test_a_shrink_below_what_the_guest_uses_is_refused(vmem: QemuVm, boot_total_kb: int, root: Path) -> None:
    driver = QemuDriver(root)
    await driver.resize_memory("mem1", BOOT_MB * MIB + GROW)
    await settle(driver, "mem1", BOOT_MB * MIB + GROW)
    # its STAT line must show the grown guest first: one from before the grow also has little available
    grown = boot_total_kb + GROW // KIB
    await eventually(lambda: guest_total_kb(vmem) == grown, timeout=30, what="the grown MemTotal")
    try:
        await asyncio.to_thread(hold, vmem, 600)

        async def held() -> bool:
            view = await driver.read_memory("mem1")
            return view.guest_available_bytes is not None and view.guest_available_bytes < GROW - SHRINK_MARGIN_BYTES

        await eventually(held, timeout=60, interval=0.5, what="the guest reporting 600 MiB held")
        with pytest.raises(DriverError) as info:
            await driver.resize_memory("mem1", BOOT_MB * MIB)
        assert info.value.code is ErrorCode.BELOW_USED, info.value.message
        assert (await driver.read_memory("mem1")).requested_bytes == BOOT_MB * MIB + GROW  # QEMU was not asked
    finally:
        await asyncio.to_thread(release, vmem)

    async def freed() -> bool:
        view = await driver.read_memory("mem1")
        return view.guest_available_bytes is not None and view.guest_available_bytes > GROW + SHRINK_MARGIN_BYTES

    await eventually(freed, timeout=60, interval=0.5, what="the guest reporting its memory free again")
    await driver.resize_memory("mem1", BOOT_MB * MIB)
    await settle(driver, "mem1", BOOT_MB * MIB)


async def test_the_balloon_trims_boot_ram_down_to_its_floor(ballooned: QemuVm, root: Path) -> None:
    driver = QemuDriver(root)
    before = await driver.read_memory("bal1")
    assert (before.method, before.size_bytes, before.max_bytes) == ("balloon", BOOT_MB * MIB, BOOT_MB * MIB)
    assert before.min_bytes == BOOT_MB * MIB // 2  # the driver's floor: a balloon has none of its own
    await eventually(lambda: guest_available_kb(ballooned) is not None, timeout=30, what="a STAT with MemAvailable")
    available = (await driver.read_memory("bal1")).guest_available_bytes
    assert available is not None
    trim = 128 * MIB
    await driver.resize_memory("bal1", BOOT_MB * MIB - trim)
    view = await settle(driver, "bal1", BOOT_MB * MIB - trim)
    assert view.requested_bytes == BOOT_MB * MIB - trim

    async def trimmed() -> bool:  # deflate-on-oom: MemTotal stays, what the balloon holds is no longer available
        seen = (await driver.read_memory("bal1")).guest_available_bytes
        return seen is not None and seen < available - trim + 32 * MIB

    await eventually(trimmed, timeout=30, interval=0.5, what="the guest's MemAvailable down by the trim")
    with pytest.raises(DriverError) as info:
        await driver.resize_memory("bal1", 128 * MIB)
    assert info.value.code is ErrorCode.OUT_OF_BOUNDS
    assert "256MiB to 512MiB" in info.value.message, info.value.message
    await driver.resize_memory("bal1", BOOT_MB * MIB)
    await settle(driver, "bal1", BOOT_MB * MIB)


async def test_a_vm_without_a_memory_device_refuses_memory_commands(tmp_path: Path) -> None:
    """A VM started without virtio-mem or a balloon (or by a version that recorded no memory): refused before QMP.
    Its state.json names this test's own process, so it counts as running without a guest."""
    fake = QemuVm("plain", tmp_path)
    fake.dir.mkdir(parents=True)
    fake.state_path.write_bytes(
        b'{"name": "plain", "pid": %d, "max_vcpus": 2, "boot_vcpus": 1, "maxcpus": 32}' % os.getpid()
    )
    assert fake.state() == VmState(name="plain", pid=os.getpid(), max_vcpus=2, boot_vcpus=1, maxcpus=32)
    driver = QemuDriver(tmp_path)
    for call in (driver.read_memory("plain"), driver.resize_memory("plain", 1024 * MIB)):
        with pytest.raises(DriverError) as info:
            await call
        assert info.value.code is ErrorCode.HOTPLUG_DISABLED
        assert "--max-memory" in info.value.message


async def test_the_source_reports_the_size_the_driver_reads_and_follows_a_grow(vmem: QemuVm, root: Path) -> None:
    """The collector's ``qemu`` source and the driver read one quantity (``shared.qemu.memview``): a sample's
    ``memory.size_bytes`` is what the actuator checks a command's ``seen_memory_bytes`` against."""
    driver = QemuDriver(root)
    source = QemuSource(Clock(), root)
    readings: list[Reading] = []

    async def read() -> Reading:
        readings.append(next(r for r in await source.read() if r.vm == "mem1"))
        return readings[-1]

    async def agree(size: int) -> bool:  # the same size in both, and the guest's figures in the source's
        memory = (await read()).memory
        view = await driver.read_memory("mem1")
        return (
            memory is not None
            and memory.used_bytes is not None
            and (memory.size_bytes, memory.min_bytes, memory.max_bytes)
            == (view.size_bytes, view.min_bytes, view.max_bytes)
            == (size, BOOT_MB * MIB, MAX_MB * MIB)
        )

    await settle(driver, "mem1", BOOT_MB * MIB)
    await eventually(lambda: agree(BOOT_MB * MIB), timeout=30, what=f"source and driver at boot RAM ({readings[-1:]})")
    before = readings[-1]
    try:
        await driver.resize_memory("mem1", BOOT_MB * MIB + GROW)
        await settle(driver, "mem1", BOOT_MB * MIB + GROW)
        await eventually(
            lambda: agree(BOOT_MB * MIB + GROW), timeout=30, what=f"source and driver grown ({readings[-1:]})"
        )
        sample = sample_from(before, readings[-1], "h", "qemu")
        assert sample is not None and sample.memory is not None
        assert sample.memory.size_bytes == BOOT_MB * MIB + GROW
        assert sample.cpu_used_cores >= 0  # the CPU reading is still there beside memory
    finally:
        await driver.resize_memory("mem1", BOOT_MB * MIB)
        await settle(driver, "mem1", BOOT_MB * MIB)


async def test_the_drivers_host_view_holds_each_guests_memory_read_on_its_monitor(
    vmem: QemuVm, ballooned: QemuVm, root: Path
) -> None:
    """The actuator's host view (issue 21): this machine's MemTotal and what each guest holds, the larger of its
    size and the size asked for, read on the monitoring socket: a held control socket does not stop it, a held
    monitor leaves the view without memory after its bound, never a sum without that guest."""
    driver = QemuDriver(root)
    await settle(driver, "mem1", BOOT_MB * MIB)
    await settle(driver, "bal1", BOOT_MB * MIB)
    view = await driver.host_view()
    assert view.memory_bytes == read_host_memory()
    assert view.vm_memory == {"mem1": BOOT_MB * MIB, "bal1": BOOT_MB * MIB}
    try:
        await driver.resize_memory("mem1", BOOT_MB * MIB + GROW)
        # at once, whether or not the guest has plugged it yet: the grow under way counts at its size
        assert (await driver.host_view()).vm_memory["mem1"] == BOOT_MB * MIB + GROW
        async with vmem.qmp():  # the control socket held, as an unplug holds it for up to 5 s
            assert (await driver.host_view()).vm_memory["mem1"] == BOOT_MB * MIB + GROW
        async with vmem.qmp(monitor=True):  # the monitor held past the bound: no memory, the vCPUs still there
            held = await driver.host_view()
        assert (held.memory_bytes, held.vm_memory, sorted(held.vms)) == (None, {}, ["bal1", "mem1"])
    finally:
        await driver.resize_memory("mem1", BOOT_MB * MIB)
        await settle(driver, "mem1", BOOT_MB * MIB)
