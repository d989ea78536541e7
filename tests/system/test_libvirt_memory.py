"""Guest memory on real libvirt (libvirtd 11.3, ``qemu:///system``): the driver's ``read_memory``/``resize_memory``
against one TCG test guest with a virtio-mem device and a balloon (``hotplug libvirt start --max-memory``), and
the ``libvirt`` collector source reading the same size.

Requirements and the skip rule are test_libvirt_guests.py's (in CI they must run; elsewhere they skip and say
what is missing). One memory guest serves the module; the domain without a memory device is created and destroyed
without waiting for its boot (its refusal is read from its definition).

Moving the guest's memory needs the guest's virtio_mem and virtio_balloon drivers in the project's image (and
``memhp_default_state=online_movable``, which the domain's command line carries). Without them libvirt takes every
request and nothing moves (shared/docs/memory.md trap 7): the refusals and requests are checked through libvirt's
own view, the sizes and the guest's MemTotal only where the guest has the drivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hotplug.harness.poll import eventually
from services.actuator.drivers.base import DriverError, MemoryView
from shared.libvirt.connection import Connection
from shared.libvirt.guest import GuestChannel
from shared.messages import ErrorCode
from shared.units import KIB, MIB
from tests.system.test_libvirt_guests import URI, _missing

pytestmark = pytest.mark.external  # needs a tool from the OS (libvirtd, QEMU)
# Under `-n` (bin/test) this module is in xdist group "libvirt": see XDIST_GROUPS in tests/conftest.py.

BOOT_MB = 512
MAX_MB = 1024
NAME = f"hp mem{os.getpid()} 'q' $(touch pwned)"  # as users name things; nothing may run it
# TCG on a shared 2-core machine: libvirt's <current> follows the guest ≥1 s late, the guest answers in seconds.
SETTLE_S = 45.0


@dataclass
class MemoryGuest:
    name: str
    conn: Connection
    channel: GuestChannel
    root: Path

    def mem_total_kib(self) -> int | None:
        """The guest's own MemTotal (kB), or None when it does not answer."""
        answer = self.channel.ask("grep MemTotal /proc/meminfo", timeout_s=60)
        if answer is None or not answer.startswith("MemTotal:"):
            return None
        return int(answer.split()[1])

    def has_memory_drivers(self) -> bool:
        answer = self.channel.ask(
            "test -d /sys/bus/virtio/drivers/virtio_mem -a -d /sys/bus/virtio/drivers/virtio_balloon && echo yes "
            "|| echo no",
            timeout_s=60,
        )
        return bool(answer == "yes")

    def requested_kib(self) -> int:
        """``<requested>`` of the live domain's virtio-mem device, as libvirt shows it."""
        from shared.libvirt.memory import parse_memory

        device = parse_memory(self.conn.run(lambda c: c.lookupByName(self.name).XMLDesc(0))).virtio_mem
        assert device is not None
        return device.requested_kib


@pytest.fixture(scope="module")
def guest() -> Iterator[MemoryGuest]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from hotplug.hypervisors import libvirt as libvirt_admin
    from shared.libvirt.guest import guest_dir

    root = Path(f"/tmp/hlm-test-{os.getpid()}")  # short: unix socket paths
    shutil.rmtree(root, ignore_errors=True)
    conn = Connection(URI)
    try:
        libvirt_admin.start(conn, NAME, 2, 1, BOOT_MB, root, max_memory_mb=MAX_MB)
        directory = guest_dir(NAME, root)
        yield MemoryGuest(NAME, conn, GuestChannel(directory / "ctl.log", directory / "ctl.sock"), root)
    finally:
        with contextlib.suppress(conn.libvirt.libvirtError):  # it never started, or is gone already
            conn.run(lambda c: c.lookupByName(NAME).destroy())
        conn.close()
        shutil.rmtree(root, ignore_errors=True)


def driver() -> Any:
    from services.actuator.drivers.libvirt import LibvirtDriver

    return LibvirtDriver(URI)


async def _refused(d: Any, name: str, target: int) -> DriverError:
    with pytest.raises(DriverError) as caught:
        await d.resize_memory(name, target)
    return caught.value


async def test_libvirt_takes_requests_and_refuses_what_is_past_the_device(guest: MemoryGuest) -> None:
    d = driver()
    try:
        view = await d.read_memory(guest.name)
        assert (view.min_bytes, view.max_bytes, view.step_bytes) == (256 * MIB, MAX_MB * MIB, 2 * MIB)
        assert view.method == "virtio-mem+balloon"
        await d.resize_memory(guest.name, 768 * MIB)
        assert (await d.read_memory(guest.name)).requested_bytes == 768 * MIB
        assert await asyncio.to_thread(guest.requested_kib) == 256 * 1024  # the device carries what is above boot
        past = await _refused(d, guest.name, 2 * MAX_MB * MIB)
        assert past.code is ErrorCode.OUT_OF_BOUNDS
        assert "requested size must be smaller than or equal to @size (524288KiB)" in past.message  # libvirt's own
        off_block = await _refused(d, guest.name, 769 * MIB)
        assert off_block.code is ErrorCode.OUT_OF_BOUNDS
        assert "integer multiple of block size" in off_block.message
        floor = await _refused(d, guest.name, 128 * MIB)
        assert floor.code is ErrorCode.OUT_OF_BOUNDS and "floor" in floor.message
        assert await asyncio.to_thread(guest.requested_kib) == 256 * 1024  # the refusals changed nothing
        await d.resize_memory(guest.name, BOOT_MB * MIB)
        assert await asyncio.to_thread(guest.requested_kib) == 0
        assert (await d.read_memory(guest.name)).requested_bytes == BOOT_MB * MIB
    finally:
        await d.close()


async def test_a_domain_without_a_memory_device_is_refused(guest: MemoryGuest) -> None:
    from shared.libvirt.guest import domain_xml, guest_dir
    from shared.qemu.image import ensure_image

    name = f"{guest.name} plain"
    directory = guest_dir(name, guest.root)
    directory.mkdir(parents=True, exist_ok=True)
    xml = domain_xml(name, ensure_image(), directory, max_vcpus=2, vcpus=1)  # fixed RAM, balloon model='none'
    guest.conn.run(lambda c: c.createXML(xml, 0))
    d = driver()
    try:
        with pytest.raises(DriverError) as read:
            await d.read_memory(name)
        assert read.value.code is ErrorCode.HOTPLUG_DISABLED and "no memory device" in read.value.message
        refused = await _refused(d, name, 384 * MIB)
        assert refused.code is ErrorCode.HOTPLUG_DISABLED
    finally:
        await d.close()
        guest.conn.run(lambda c: c.lookupByName(name).destroy())


async def test_virtio_mem_grows_the_guest_and_the_balloon_trims_it(guest: MemoryGuest) -> None:
    """Needs the guest image's virtio_mem/virtio_balloon modules."""
    if not await asyncio.to_thread(guest.has_memory_drivers):
        reason = "the guest image has no virtio_mem/virtio_balloon drivers (shared/qemu/image.py must load them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    d = driver()
    last: list[MemoryView] = []

    async def size_is(size: int) -> bool:
        last[:] = [await d.read_memory(guest.name)]
        return last[0].size_bytes == size

    try:
        await d.resize_memory(guest.name, BOOT_MB * MIB)
        await eventually(lambda: size_is(BOOT_MB * MIB), timeout=SETTLE_S, what=f"boot RAM only (last {last})")
        before = await asyncio.to_thread(guest.mem_total_kib)
        assert before is not None
        # grow by 256 MiB: libvirt's <current> reaches it ~1 s after the guest, MemTotal moves by exactly that much
        await d.resize_memory(guest.name, 768 * MIB)
        await eventually(lambda: size_is(768 * MIB), timeout=SETTLE_S, what=f"768 MiB in libvirt's view ({last})")
        grown = await asyncio.to_thread(guest.mem_total_kib)
        assert grown == before + 256 * 1024
        # the balloon's stats carry the guest's MemTotal (every 2 s)
        await eventually(
            lambda: _guest_total_is(d, guest.name, grown * KIB), timeout=SETTLE_S, what="the balloon's MemTotal"
        )
        # trim within boot RAM: the device gives its 256 MiB back, then the balloon takes 128 MiB of boot RAM
        await d.resize_memory(guest.name, 384 * MIB)
        await eventually(lambda: size_is(384 * MIB), timeout=SETTLE_S, what=f"384 MiB in libvirt's view ({last})")
        assert last[0].requested_bytes == 384 * MIB
        # the balloon deflates on OOM (autodeflate): MemTotal keeps boot RAM, only the device's blocks left it
        assert await asyncio.to_thread(guest.mem_total_kib) == before
        await d.resize_memory(guest.name, BOOT_MB * MIB)
        await eventually(lambda: size_is(BOOT_MB * MIB), timeout=SETTLE_S, what=f"boot RAM again ({last})")
    finally:
        await d.close()


async def _guest_total_is(d: Any, name: str, total: int) -> bool:
    return bool((await d.read_memory(name)).guest_total_bytes == total)


async def test_the_source_reports_the_size_the_driver_reads(guest: MemoryGuest) -> None:
    """The collector's ``libvirt`` source (``balloon.current`` of the NOWAIT stats) and the driver (balloon actual
    + the live XML's ``<current>``) read one quantity through ``shared.libvirt.memview``, before and after a grow.
    Needs the guest image's virtio_mem/virtio_balloon modules."""
    from services.collector.sources.base import Reading
    from services.collector.sources.libvirt import LibvirtSource
    from shared.clock import Clock

    if not await asyncio.to_thread(guest.has_memory_drivers):
        reason = "the guest image has no virtio_mem/virtio_balloon drivers (shared/qemu/image.py must load them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    d = driver()
    source = LibvirtSource(Clock(), URI, domains=[guest.name])
    seen: list[tuple[Reading, MemoryView]] = []

    async def agree(size: int) -> bool:
        reading = next(r for r in await source.read() if r.vm == guest.name)
        view = await d.read_memory(guest.name)
        seen[:] = [(reading, view)]
        memory = reading.memory
        return (
            memory is not None
            and memory.used_bytes is not None  # the balloon's stats, once the guest sends them
            and (memory.size_bytes, memory.min_bytes, memory.max_bytes)
            == (view.size_bytes, view.min_bytes, view.max_bytes)
            == (size, 256 * MIB, MAX_MB * MIB)
        )

    try:
        await d.resize_memory(guest.name, BOOT_MB * MIB)
        await eventually(lambda: agree(BOOT_MB * MIB), timeout=SETTLE_S, what=f"boot RAM in both ({seen})")
        await d.resize_memory(guest.name, 768 * MIB)
        await eventually(lambda: agree(768 * MIB), timeout=SETTLE_S, what=f"768 MiB in both ({seen})")
        await d.resize_memory(guest.name, BOOT_MB * MIB)
        await eventually(lambda: agree(BOOT_MB * MIB), timeout=SETTLE_S, what=f"boot RAM again in both ({seen})")
    finally:
        await d.close()
        await source.close()
