"""The real drivers' host views carry the host's memory and every running VM's (issue 21), without a hypervisor: the
qemu driver on guests' state files and fake QMP monitors, the libvirt driver on a fake connection, the virtualbox
driver on a fake VBoxManage (the stand-in's run is in tests/component/test_virtualbox_memory.py). Each view is
then judged as the actuator judges it (``shared.pool.memory_capacity`` and ``Reservations``): a memory grow cut, or
refused ``host-full``, because the host's memory is committed. A view that could not read a running VM's memory
carries none, and says so once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from services.actuator.drivers import qemu as qemu_driver
from services.actuator.drivers.base import DriverError, HostView
from services.actuator.drivers.host_memory import HostMemory
from services.actuator.drivers.libvirt import LibvirtDriver
from services.actuator.drivers.qemu import QemuDriver
from services.actuator.drivers.virtualbox import VirtualBoxDriver
from services.actuator.reservations import Grant, Reservations
from shared.config.schema import HostRule
from shared.messages import ErrorCode, Resource
from shared.pool import memory_capacity
from shared.qemu.vm import QemuError, QemuVm, VmState
from shared.units import GIB, KIB, MIB
from shared.virtualbox import VmInfo
from tests.unit.test_libvirt_memory import LIVE
from tests.unit.test_source_memory import FakeQmp

STEP = 2 * MIB


def judged(view: HostView, rules: tuple[HostRule, ...]) -> Reservations:
    """The actuator's memory ledger after taking ``view`` under ``rules`` (as ``Actuator._look`` does)."""
    room = Reservations("h", Resource.MEMORY)
    capacity = None if view.memory_bytes is None else memory_capacity(rules, "h", view.memory_bytes)
    room.observe(view, None if capacity is None else capacity.capacity_bytes, room.ticket())
    return room


# -- the memory half of a view, and its log ------------------------------------------------------------------------


def test_a_view_has_the_hosts_memory_only_with_every_running_vms(caplog: pytest.LogCaptureFixture) -> None:
    memory = HostMemory("qemu")
    whole = memory.view(4, {"a": 1, "b": 2}, 8 * GIB, {"a": GIB, "b": 2 * GIB})
    assert whole == HostView(cpus=4, vms={"a": 1, "b": 2}, memory_bytes=8 * GIB, vm_memory={"a": GIB, "b": 2 * GIB})
    assert memory.view(4, {}, 8 * GIB, {}).memory_bytes == 8 * GIB  # no VM: nothing committed
    with caplog.at_level(logging.INFO, logger="services.actuator.drivers.host_memory"):
        short = memory.view(4, {"a": 1, "b": 2}, 8 * GIB, {"a": GIB, "b": None}, {"b": "no answer"})
        # a sum without b would say the host has room it does not have: no memory at all, the vCPUs still there
        assert short == HostView(cpus=4, vms={"a": 1, "b": 2})
        memory.view(4, {"a": 1, "b": 2}, 8 * GIB, {"a": GIB, "b": None})  # the same gap: said once
        assert memory.view(4, {"a": 1}, None, {"a": GIB}).memory_bytes is None  # the host's own memory not read
        memory.view(4, {"a": 1}, 8 * GIB, {"a": GIB})
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        (
            "WARNING",
            "qemu host view without memory: not read: b (no answer); memory grows are not held to the host's memory "
            "until it is",
        ),
        (
            "WARNING",
            "qemu host view without memory: not read: the host's own memory; memory grows are not held to the host's "
            "memory until it is",
        ),
        ("INFO", "qemu host view: every running VM's memory read again: memory grows are held to the host's"),
    ]


# -- qemu ----------------------------------------------------------------------------------------------------------

MEMINFO = "MemTotal:        4194304 kB\nMemFree:         1048576 kB\n"


def guest(root: Path, name: str, **memory: Any) -> QemuVm:
    """A running guest's directory: its state file names this test's own process, which runs."""
    vm = QemuVm(name, root)
    vm.dir.mkdir(parents=True)
    state = VmState(name=name, pid=os.getpid(), max_vcpus=4, boot_vcpus=1, maxcpus=32, **memory)
    vm.state_path.write_bytes(msgspec.json.encode(state))
    return vm


@dataclass
class Monitors:
    """Stands in for ``QemuVm.qmp``: each guest's fake QMP, on the monitoring socket only."""

    qmps: dict[str, FakeQmp | Exception]
    opened: list[tuple[str, bool]] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monitors = self

        @contextlib.asynccontextmanager
        async def qmp(vm: QemuVm, monitor: bool = False) -> AsyncIterator[FakeQmp]:
            monitors.opened.append((vm.name, monitor))
            answer = monitors.qmps[vm.name]
            if isinstance(answer, Exception):
                raise answer
            yield answer

        monkeypatch.setattr(QemuVm, "qmp", qmp)


@pytest.fixture
def qemu_host(tmp_path: Path) -> tuple[QemuDriver, Path]:
    """Three guests: none (512 MiB boot RAM, no device), vmem (512 MiB + a 1 GiB virtio-mem device, 256 MiB
    plugged of 512 MiB asked: a grow under way) and ball (a balloon at 384 MiB of 512 MiB, asked 384 MiB)."""
    root = tmp_path / "guests"
    guest(root, "none", memory_bytes=512 * MIB)
    guest(root, "vmem", memory_bytes=512 * MIB, vmem_bytes=GIB)
    guest(root, "ball", memory_bytes=512 * MIB, balloon=True, balloon_target_bytes=384 * MIB)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    return QemuDriver(root, meminfo), root


async def test_the_qemu_view_is_this_machines_memory_and_what_each_guest_holds(
    qemu_host: tuple[QemuDriver, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    driver, _ = qemu_host
    monitors = Monitors({"vmem": FakeQmp(), "ball": FakeQmp(balloon_actual=384 * MIB)})
    monitors.install(monkeypatch)
    view = await driver.host_view()
    assert view.memory_bytes == 4 * GIB  # MemTotal of the machine's /proc/meminfo
    # none: its boot RAM; vmem: 768 MiB now, 1 GiB asked, so 1 GiB; ball: its balloon's 384 MiB
    assert view.vm_memory == {"none": 512 * MIB, "vmem": GIB, "ball": 384 * MIB}
    assert view.vms == {"none": 4, "vmem": 4, "ball": 4}  # no vCPU threads here: each counts at its maximum
    # only the guests with a device are asked, and on the monitoring socket: the control one may be held by an unplug
    assert sorted(monitors.opened) == [("ball", True), ("vmem", True)]


async def test_a_qemu_grow_is_cut_then_refused_when_the_hosts_memory_is_committed(
    qemu_host: tuple[QemuDriver, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    driver, _ = qemu_host
    Monitors({"vmem": FakeQmp(), "ball": FakeQmp(balloon_actual=384 * MIB)}).install(monkeypatch)
    # 4 GiB less 1 GiB kept for the host: 3 GiB, of which the others hold 896 MiB; vmem counts at its 1 GiB asked
    room = judged(await driver.host_view(), (HostRule(match="*", reserve_memory="1GiB"),))
    cut = room.grant("vmem", 768 * MIB, 3 * GIB, STEP)
    assert cut == Grant("h", "vmem", 768 * MIB, 3 * GIB, 2176 * MIB, 3 * GIB, 1664 * MIB, Resource.MEMORY)
    refusal = cut.refusal()
    assert refusal is not None and refusal.code is ErrorCode.HOST_FULL
    # what vmem got stays reserved until its command ends: a grow of another guest finds no room at all
    refused = room.grant("ball", 384 * MIB, 512 * MIB, MIB)
    assert refused.size == 384 * MIB
    full = refused.refusal()
    assert full is not None and full.code is ErrorCode.HOST_FULL and "granted 0B of 128MiB" in full.message
    # without the host's reserve the same grows fit: it is the host's memory that held them
    assert judged(await driver.host_view(), ()).grant("vmem", 768 * MIB, 3 * GIB, STEP).refusal() is None


async def test_a_qemu_guest_not_read_in_time_leaves_the_view_without_memory(
    qemu_host: tuple[QemuDriver, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    driver, _ = qemu_host
    monkeypatch.setattr(qemu_driver, "HOST_MEMORY_TIMEOUT_S", 0.01)
    Monitors({"vmem": FakeQmp(hang=True), "ball": FakeQmp(balloon_actual=384 * MIB)}).install(monkeypatch)
    with caplog.at_level(logging.WARNING):
        view = await asyncio.wait_for(driver.host_view(), timeout=5)
    assert (view.memory_bytes, view.vm_memory) == (None, {})
    assert view.vms == {"none": 4, "vmem": 4, "ball": 4}  # its vCPUs are still counted
    assert "not read: vmem (its monitor did not answer within 0.01 s)" in caplog.text
    # a memory grow on a host whose memory is unknown is not judged: no ledger capacity, nothing refused
    assert not judged(view, (HostRule(match="*", reserve_memory="1GiB"),)).known


async def test_a_qemu_guest_whose_monitor_fails_or_whose_memory_is_unrecorded_leaves_no_memory(
    qemu_host: tuple[QemuDriver, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    driver, root = qemu_host
    Monitors({"vmem": QemuError("QMP connection to vmem failed"), "ball": FakeQmp(384 * MIB)}).install(monkeypatch)
    with caplog.at_level(logging.WARNING):
        assert (await driver.host_view()).memory_bytes is None
    assert "vmem (its monitor: QMP connection to vmem failed)" in caplog.text
    Monitors({"vmem": FakeQmp(), "ball": FakeQmp(384 * MIB)}).install(monkeypatch)
    guest(root, "old")  # started by a version that did not record its memory: what it holds is unknown
    view = await driver.host_view()
    assert (view.memory_bytes, "old" in view.vms) == (None, True)
    assert "old (its state file records no memory" in caplog.text


async def test_a_qemu_guest_that_stops_while_read_is_left_out(
    qemu_host: tuple[QemuDriver, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    driver, root = qemu_host

    class Stopped(FakeQmp):
        async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> object:
            QemuVm("vmem", root).state_path.unlink()  # gone: its state file with it
            raise QemuError("VM vmem is not running")

    Monitors({"vmem": Stopped(), "ball": FakeQmp(384 * MIB)}).install(monkeypatch)
    view = await driver.host_view()
    assert view.vm_memory == {"none": 512 * MIB, "ball": 384 * MIB}
    assert view.vms == {"none": 4, "ball": 4}


# -- libvirt -------------------------------------------------------------------------------------------------------


class FakeLibvirt:
    VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING = 1
    VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT = 2
    VIR_DOMAIN_STATS_BALLOON = 4
    VIR_DOMAIN_STATS_VCPU = 8
    VIR_DOMAIN_AFFECT_LIVE = 1

    class libvirtError(Exception):  # libvirt's own spelling
        def get_error_code(self) -> int:
            return 1


@dataclass
class FakeDomain:
    """A running domain: its stats row for the host view, and the live XML and balloon stats a resize reads."""

    domain_name: str
    domain_id: int
    stats: dict[str, int]
    xml: str = LIVE
    actual_kib: int = 524288
    updates: list[str] = field(default_factory=list)

    def name(self) -> str:
        return self.domain_name

    def ID(self) -> int:
        return self.domain_id

    def isActive(self) -> bool:
        return True

    def XMLDesc(self, flags: int) -> str:
        return self.xml

    def memoryStats(self) -> dict[str, int]:
        return {"actual": self.actual_kib}

    def updateDeviceFlags(self, element: str, flags: int) -> None:
        self.updates.append(element)


@dataclass
class FakeConnection:
    """Stands in for ``shared.libvirt.connection.Connection`` (a node of 4 GiB, 8 CPUs)."""

    domains: list[FakeDomain]
    node_mib: int = 4096
    libvirt: type[FakeLibvirt] = FakeLibvirt
    uri: str = "test:///fake"
    asked: list[tuple[int, int]] = field(default_factory=list)

    async def call(self, fn: Any, *, read: bool = False) -> Any:
        return fn(self)

    def getAllDomainStats(self, kinds: int, flags: int) -> list[tuple[FakeDomain, dict[str, int]]]:
        self.asked.append((kinds, flags))
        return [(dom, dom.stats) for dom in self.domains]

    def getInfo(self) -> list[object]:
        return ["x86_64", self.node_mib, 8, 2400, 1, 1, 4, 2]  # model, MiB, CPUs, MHz, nodes, sockets, cores, threads

    def lookupByName(self, name: str) -> FakeDomain:
        return next(dom for dom in self.domains if dom.domain_name == name)

    def close(self) -> None:
        pass


def libvirt_host(**balloon_current_mib: int | None) -> tuple[LibvirtDriver, FakeConnection]:
    domains = [
        FakeDomain(name, 4 + i, {"vcpu.current": 1} | ({} if mib is None else {"balloon.current": mib * 1024}))
        for i, (name, mib) in enumerate(balloon_current_mib.items())
    ]
    conn = FakeConnection(domains)
    return LibvirtDriver(connection=conn), conn  # type: ignore[arg-type]


async def test_the_libvirt_view_is_the_nodes_memory_and_each_domains_balloon_current() -> None:
    driver, conn = libvirt_host(web=640, other=1024)
    view = await driver.host_view()
    assert (view.cpus, view.memory_bytes) == (8, 4 * GIB)  # getInfo: 8 CPUs, 4096 MiB
    assert view.vm_memory == {"web": 640 * MIB, "other": GIB}
    # one bulk call, the balloon's figure in it: RUNNING | NOWAIT never waits behind an unplug, and no domain is
    # asked on its own (XMLDesc would)
    assert conn.asked == [(8 | 4, 1 | 2)]
    assert all(dom.updates == [] for dom in conn.domains)


async def test_a_libvirt_domain_without_balloon_current_leaves_the_view_without_memory() -> None:
    driver, _ = libvirt_host(web=640, other=None)
    view = await driver.host_view()
    assert (view.memory_bytes, view.vm_memory, view.vms) == (None, {}, {"web": 1, "other": 1})
    driver, conn = libvirt_host(web=640)
    conn.node_mib = 0  # a node that does not say
    assert (await driver.host_view()).memory_bytes is None


async def test_a_libvirt_grow_counts_at_the_size_asked_until_libvirt_shows_it() -> None:
    # "mem 1" (LIVE: 512 MiB boot RAM and 128 MiB plugged: 640 MiB) beside a domain of 1 GiB, on a 4 GiB node
    driver, conn = libvirt_host(**{"mem 1": 640, "other": 1024})
    await driver.resize_memory("mem 1", 2 * GIB)
    assert len(conn.domains[0].updates) == 1  # the device was asked for 1.5 GiB
    # libvirt's balloon.current follows the guest a second or two late: the grow counts at its size meanwhile
    view = await driver.host_view()
    assert view.vm_memory == {"mem 1": 2 * GIB, "other": GIB}
    with pytest.raises(DriverError):  # under the balloon's floor: refused before any call, the grow still on its way
        await driver.resize_memory("mem 1", 64 * MIB)
    assert (await driver.host_view()).vm_memory["mem 1"] == 2 * GIB
    # 4 GiB less 512 MiB kept: 3.5 GiB, 3 GiB of it committed: a grow of the other is cut to what is left
    cut = judged(view, (HostRule(match="*", reserve_memory="512MiB"),)).grant("other", GIB, 2 * GIB, STEP)
    assert cut.size == 1536 * MIB
    refusal = cut.refusal()
    assert refusal is not None and refusal.code is ErrorCode.HOST_FULL
    conn.domains[0].stats["balloon.current"] = 2 * GIB // KIB  # landed
    assert (await driver.host_view()).vm_memory["mem 1"] == 2 * GIB
    conn.domains[0].stats["balloon.current"] = GIB // KIB  # shrunk since, by someone else: libvirt's figure now says
    assert (await driver.host_view()).vm_memory["mem 1"] == GIB


async def test_a_libvirt_grow_refused_is_not_counted() -> None:
    driver, conn = libvirt_host(**{"mem 1": 640})

    def refuse(element: str, flags: int) -> None:
        raise FakeLibvirt.libvirtError("requested size must be smaller than or equal to @size")

    conn.domains[0].updateDeviceFlags = refuse  # type: ignore[method-assign]
    with pytest.raises(DriverError, match="smaller than"):
        await driver.resize_memory("mem 1", 2 * GIB)
    assert (await driver.host_view()).vm_memory == {"mem 1": 640 * MIB}


# -- virtualbox ----------------------------------------------------------------------------------------------------


@dataclass
class FakeVBox:
    """Answers ``list runningvms`` and ``showvminfo`` as ``shared.virtualbox.VBoxManage`` parses them."""

    vms: dict[str, VmInfo]

    async def list(self, which: str = "vms") -> list[tuple[str, str]]:
        assert which == "runningvms"
        return [(info.name, info.uuid) for info in self.vms.values()]

    async def info(self, vm: str) -> VmInfo:
        return next(info for info in self.vms.values() if vm in (info.name, info.uuid))


def vbox_vm(name: str, memory_mb: int, balloon_mb: int = 0, state: str = "running") -> VmInfo:
    return VmInfo(name, f"uuid-{name}", state, 2, True, (0,), "", memory_mb=memory_mb, balloon_mb=balloon_mb)


async def test_the_virtualbox_view_is_this_machines_memory_and_each_vms_ram_less_its_balloon(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    vms = {"a": vbox_vm("a", 2048, 512), "b": vbox_vm("b", 1024, state="paused")}  # a paused VM holds its RAM
    driver = VirtualBoxDriver(FakeVBox(vms), meminfo)  # type: ignore[arg-type]
    view = await driver.host_view()
    assert (view.memory_bytes, view.vm_memory) == (4 * GIB, {"a": 1536 * MIB, "b": GIB})
    # 4 GiB, 2.5 GiB of it committed: a grow of b to 2 GiB is cut to the 1.5 GiB left, on the balloon's MiB
    cut = judged(view, ()).grant("b", GIB, 3 * GIB, MIB)
    assert cut.size == 2560 * MIB and cut.refusal() is not None
    vms["c"] = vbox_vm("c", 0)  # a showvminfo without memory=: what it holds is unknown
    assert (await driver.host_view()).memory_bytes is None
