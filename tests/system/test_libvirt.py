"""The libvirt parts that need no daemon: the domain XML read into data, the error table mapped to the contract's
codes, the settings metadata, the prepared layout, the test guest's XML with hostile names, the source's counters
across a re-plug, and how the driver finds QEMU's vCPU threads. Real guests: tests/system/test_libvirt_guests.py."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import msgspec
import pytest

from services.actuator.drivers.libvirt import qemu_pid
from shared.libvirt.domain import (
    RUNTIME_NS,
    SETTINGS_NS,
    Budget,
    Settings,
    budget_xml,
    classify,
    hotpluggable_layout,
    parse_domain,
    parse_settings_xml,
    settings_xml,
)
from shared.libvirt.guest import domain_xml, guest_dir, started_by_us
from shared.messages import ErrorCode
from shared.qemu.image import GuestImage
from shared.qemu.vm import vcpu_threads

HOSTILE = ["a b", 'it\'s "quoted"', "$(touch pwned)", "`id`; rm -rf x", "<tag>&amp;", "ümlaut ∆"]

RUNNING = f"""<domain type='qemu' id='7'>
  <name>web 1</name><uuid>40606083-2151-4d84-a03c-a66d6ad4763d</uuid>
  <metadata>
    <hotplug:settings xmlns:hotplug="{SETTINGS_NS}" enabled="yes" min-vcpus="2" max-vcpus="6"/>
    <hotplugrun:tcg xmlns:hotplugrun="{RUNTIME_NS}" domain-id="7" boot-vcpus="1" adds="5"/>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0"/>
  </metadata>
  <vcpu placement='static' current='3'>32</vcpu>
  <vcpus>
    <vcpu id='0' enabled='yes' hotpluggable='no' order='1'/>
    <vcpu id='1' enabled='yes' hotpluggable='yes' order='2'/>
    <vcpu id='2' enabled='no' hotpluggable='yes'/>
    <vcpu id='3' enabled='yes' hotpluggable='yes' order='3'/>
  </vcpus>
  <devices>
    <serial type='file'><source path='/s/console.log'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='/s/ctl.sock'/><log file='/s/ctl.log'/><target port='1'/></serial>
  </devices>
</domain>"""


def test_a_running_domain_is_read_with_its_layout_settings_and_budget() -> None:
    info = parse_domain(RUNNING)
    assert (info.name, info.domain_id, info.kind, info.tcg, info.maximum) == ("web 1", 7, "qemu", True, 32)
    assert [(v.id, v.enabled, v.hotpluggable) for v in info.vcpus] == [
        (0, True, False),
        (1, True, True),
        (2, False, True),
        (3, True, True),
    ]
    assert info.online == 3
    assert info.settings == Settings(enabled=True, min_vcpus=2, max_vcpus=6)
    assert (info.min_vcpus, info.max_vcpus) == (2, 6)
    assert info.budget == Budget(domain_id=7, boot_vcpus=1, adds=5)
    assert info.adds_left() == 32 - 1 - 5
    assert (info.control_log, info.control_socket) == ("/s/ctl.log", "/s/ctl.sock")


def test_without_a_vcpus_element_the_boot_vcpus_are_fixed_and_the_rest_hotpluggable() -> None:
    info = parse_domain("<domain type='kvm' id='3'><name>x</name><vcpu current='2'>4</vcpu></domain>")
    assert [(v.enabled, v.hotpluggable) for v in info.vcpus] == [
        (True, False),
        (True, False),
        (False, True),
        (False, True),
    ]
    assert (info.online, info.fixed, info.min_vcpus, info.max_vcpus) == (2, 2, 2, 4)
    assert info.adds_left() is None  # KVM: no hot-add budget
    assert info.settings == Settings()
    assert info.control_log is None


def test_a_budget_from_another_run_of_the_domain_is_not_used() -> None:
    info = parse_domain(RUNNING.replace("id='7'", "id='8'", 1))
    assert info.current_budget() == Budget(domain_id=8, boot_vcpus=3, adds=0)  # first seen now: online as booted
    assert info.adds_left() == 32 - 3


def test_settings_metadata_round_trips_and_bad_text_means_no_settings() -> None:
    settings = Settings(enabled=False, min_vcpus=1, max_vcpus=8)
    assert parse_settings_xml(settings_xml(settings)) == settings
    assert parse_settings_xml(None) == Settings()
    assert parse_settings_xml("<settings max-vcpus='lots'") == Settings()
    assert parse_settings_xml("<settings max-vcpus='lots'/>") == Settings()
    assert 'adds="4"' in budget_xml(Budget(1, 2, 4))


@pytest.mark.parametrize(
    ("code", "message", "op", "expected"),
    [
        (42, "Domain not found: no domain with matching name 'x'", "", ErrorCode.VM_NOT_FOUND),
        (55, "Requested operation is not valid: domain is not running", "plug", ErrorCode.VM_NOT_RUNNING),
        (
            8,
            "invalid argument: requested vcpus is greater than max allowable vcpus for the live domain: 5 > 4",
            "plug",
            ErrorCode.OUT_OF_BOUNDS,
        ),
        (8, "nvcpus in virDomainSetVcpusFlags must not be zero", "unplug", ErrorCode.CPU0),
        (84, "Operation not supported: vcpu '0' can't be unplugged", "unplug", ErrorCode.CPU0),
        (8, "invalid argument: vcpu '2' is already in requested state", "plug", ErrorCode.ALREADY_ATTACHED),
        (8, "invalid argument: vcpu '2' is already in requested state", "unplug", ErrorCode.NOT_ATTACHED),
        (8, "invalid argument: vcpu 40 is not present in live config", "plug", ErrorCode.CPU_ID_OUT_OF_RANGE),
        (
            68,
            "Timed out during operation: vcpu unplug request timed out. Unplug result must be manually inspected in "
            "the domain",
            "unplug",
            ErrorCode.GUEST_REFUSED,
        ),
        (38, "Unable to read from monitor: Connection reset by peer", "plug", ErrorCode.HOTPLUG_BUDGET),
        (
            38,
            "Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory",
            "",
            ErrorCode.UNKNOWN,
        ),
        (29, "operation forbidden: read only access prevents virDomainSetVcpusFlags", "plug", ErrorCode.UNKNOWN),
    ],
)
def test_every_error_of_the_table_has_its_code(code: int, message: str, op: str, expected: ErrorCode) -> None:
    assert classify(code, message, op) is expected


def test_prepare_layout_makes_boot_vcpus_hotpluggable_and_keeps_other_metadata() -> None:
    xml = hotpluggable_layout(RUNNING.replace("<vcpus>", "<x/><vcpus>", 1), boot=2)
    info = parse_domain(xml)
    assert [(v.id, v.enabled, v.hotpluggable) for v in info.vcpus][:4] == [
        (0, True, False),
        (1, True, True),
        (2, False, True),
        (3, False, True),
    ]
    assert len(info.vcpus) == 32
    assert "libosinfo:libosinfo" in xml and "http://libosinfo.org/xmlns/libvirt/domain/1.0" in xml
    assert info.settings.max_vcpus == 6  # our own metadata is still read
    bare = parse_domain(hotpluggable_layout("<domain type='kvm'><name>n</name><vcpu>3</vcpu></domain>", boot=1))
    assert [(v.enabled, v.hotpluggable) for v in bare.vcpus] == [(True, False), (False, True), (False, True)]


@pytest.mark.parametrize("name", HOSTILE)
def test_the_test_guest_xml_keeps_any_name_as_text(name: str, tmp_path: Path) -> None:
    image = GuestImage(kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd")
    directory = guest_dir(name, tmp_path)
    assert directory.parent == tmp_path and len(directory.name) == 16  # a short path, whatever the name
    xml = domain_xml(name, image, directory, max_vcpus=4, vcpus=2)
    root = ET.fromstring(xml)
    assert root.findtext("name") == name
    info = parse_domain(xml)
    assert (info.maximum, info.online, info.settings.max_vcpus, info.settings.enabled) == (32, 2, 4, True)
    settings = root.find(f"metadata/{{{SETTINGS_NS}}}settings")
    assert settings is not None
    assert started_by_us(ET.tostring(settings, encoding="unicode"))
    assert not started_by_us("<settings enabled='yes'/>")


def test_the_driver_finds_qemu_and_its_vcpu_threads_in_proc(tmp_path: Path) -> None:
    uuid = "40606083-2151-4d84-a03c-a66d6ad4763d"
    for pid, cmdline, threads in [
        (10, ["bash"], ["bash"]),
        (
            20,
            ["qemu", "-name", "guest=x", "-uuid", uuid, "-smp", "1"],
            ["qemu-system-x86", "CPU 0/TCG", "CPU 3/TCG", "IO mon_iothread"],
        ),
    ]:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")
        for tid, comm in enumerate(threads):
            task = tmp_path / str(pid) / "task" / str(pid + tid)
            task.mkdir(parents=True)
            (task / "comm").write_text(comm + "\n")
    assert qemu_pid(uuid, tmp_path) == 20
    assert qemu_pid("00000000-2151-4d84-a03c-a66d6ad4763d", tmp_path) is None
    assert vcpu_threads(20, tmp_path) == {0, 3}
    assert vcpu_threads(99, tmp_path) is None


class _FakeLibvirt:
    VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING = 1
    VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT = 2
    VIR_DOMAIN_STATS_VCPU = 8
    VIR_DOMAIN_STATS_BALLOON = 4
    VIR_DOMAIN_METADATA_ELEMENT = 2
    VIR_ERR_NO_DOMAIN_METADATA = 80

    class libvirtError(Exception):  # libvirt's own spelling
        pass


class _FakeDomain:
    def name(self) -> str:
        return "web 1"

    def UUIDString(self) -> str:
        return "40606083-2151-4d84-a03c-a66d6ad4763d"

    def ID(self) -> int:
        return 7

    def XMLDesc(self, flags: int) -> str:
        return RUNNING.replace("<serial type='unix'>", "<serial type='null'>")

    def metadata(self, kind: int, uri: str, flags: int) -> str:
        assert uri == SETTINGS_NS
        return '<settings enabled="no"/>'  # the admin opted the domain out meanwhile


class _FakeConnection:
    """Stands in for shared.libvirt.connection.Connection: serves getAllDomainStats rows one round at a time."""

    uri = "test:///fake"
    libvirt = _FakeLibvirt

    def __init__(self, rounds: list[dict[str, float]], domain: _FakeDomain | None = None) -> None:
        self.rounds = rounds
        self.domain = domain or _FakeDomain()
        self.flags: list[int] = []
        self.kinds: list[int] = []

    async def call(self, fn: object, *, read: bool = False) -> object:
        assert callable(fn) and read
        return fn(self)

    def getAllDomainStats(self, stats: int, flags: int) -> list[tuple[_FakeDomain, dict[str, float]]]:
        self.flags.append(flags)
        self.kinds.append(stats)
        return [(self.domain, self.rounds.pop(0))]

    def getInfo(self) -> list[object]:
        return ["x86_64", 15_872, 12, 2400, 1, 1, 6, 2]  # model, MiB, CPUs, MHz, nodes, sockets, cores, threads

    def close(self) -> None:
        pass


async def test_source_counts_a_replugged_vcpu_as_a_new_series_and_host_wait_not_as_pressure() -> None:
    from prometheus_client import CollectorRegistry

    from services.collector.rates import sample_from
    from services.collector.sources.libvirt import LibvirtSource
    from shared.clock import Clock

    s = 1e9
    conn = _FakeConnection(
        [
            {
                "vcpu.current": 2,
                "vcpu.maximum": 32,
                "vcpu.0.time": 10 * s,
                "vcpu.0.delay": 1 * s,
                "vcpu.1.time": 4 * s,
                "vcpu.1.delay": 2 * s,
            },
            # vCPU 1 was unplugged and plugged again: a new thread, its time restarted
            {
                "vcpu.current": 2,
                "vcpu.maximum": 32,
                "vcpu.0.time": 11 * s,
                "vcpu.0.delay": 9 * s,
                "vcpu.1.time": 0.5 * s,
                "vcpu.1.delay": 2 * s,
            },
        ]
    )
    registry = CollectorRegistry()
    source = LibvirtSource(Clock(), connection=conn, registry=registry)  # type: ignore[arg-type]
    first = (await source.read())[0]
    second = (await source.read())[0]
    assert conn.flags == [3, 3]  # RUNNING | NOWAIT: never blocks behind an unplug
    assert conn.kinds == [8 | 4, 8 | 4]  # VCPU | BALLOON
    assert first.memory is None  # no balloon.current in these rows: no memory rather than a made-up size
    assert (first.vm, first.online_vcpus, first.min_vcpus, first.max_vcpus) == ("web 1", 2, 2, 6)
    assert sorted(second.per_vcpu_seconds or {}) == ["0000.0", "0001.1"]
    assert second.cpu_seconds - first.cpu_seconds == pytest.approx(1.5)  # 1 s on vCPU 0, 0.5 s on the new vCPU 1
    assert second.waiting_core_seconds is None  # host run-queue wait is not the VM's demand
    assert registry.get_sample_value("hotplug_collector_host_wait_seconds", {"vm": "web 1"}) == pytest.approx(11)
    sample = sample_from(first, msgspec.structs.replace(second, time=first.time + 1.0), "h", "libvirt")
    assert sample is not None
    assert sample.cpu_used_cores == pytest.approx(1.5)
    assert sample.pressure_cores is None
    # the host: the node's CPUs, the domain's vCPUs, and its vCPUs' host wait as the host's (not the VM's)
    host = await source.host()
    assert host is not None
    assert (host.cpus, dict(host.vms)) == (12, {"web 1": 2})
    assert sum((host.host_wait_seconds or {}).values()) == pytest.approx(11)
    assert (host.memory_bytes, host.vm_memory) == (None, None)  # no balloon.current: what it holds is unknown


async def test_source_rereads_only_the_settings_and_honours_an_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.collector.sources import libvirt as source_module
    from shared.clock import Clock

    round_ = {"vcpu.current": 1, "vcpu.maximum": 32, "vcpu.0.time": 1e9}
    source = source_module.LibvirtSource(Clock(), connection=_FakeConnection([round_, round_]))  # type: ignore[arg-type]
    assert [r.vm for r in await source.read()] == ["web 1"]
    monkeypatch.setattr(source_module, "DEFINITION_TTL_S", 0.0)  # due now: metadata, not the whole definition
    assert await source.read() == []
    host = await source.host()  # left alone, the domain still holds its vCPU on the host
    assert host is not None and dict(host.vms) == {"web 1": 1}


async def test_source_reports_memory_from_the_balloon_stats_and_the_layout_read_once() -> None:
    from services.collector.sources.base import MemoryCounters
    from services.collector.sources.libvirt import LibvirtSource
    from shared.clock import Clock
    from shared.units import KIB, MIB

    class WithMemory(_FakeDomain):
        """512 MiB of boot RAM, a 512 MiB virtio-mem device and libvirt's balloon; read once, as the source does."""

        reads = 0

        def XMLDesc(self, flags: int) -> str:
            self.reads += 1
            return (
                super()
                .XMLDesc(flags)
                .replace(
                    "<devices>",
                    "<memory unit='KiB'>1048576</memory><devices><memory model='virtio-mem'><target>"
                    "<size unit='KiB'>524288</size><block unit='KiB'>2048</block><requested unit='KiB'>0</requested>"
                    "<current unit='KiB'>0</current></target></memory>",
                )
            )

    # balloon.current is libvirt's balloon actual + virtio-mem <current>: it moves without a new XMLDesc
    row = {"vcpu.current": 1, "vcpu.0.time": 1e9, "balloon.current": 524288}
    guest = {"balloon.available": 500000, "balloon.usable": 200000, "balloon.swap_in": 8}
    domain = WithMemory()
    conn = _FakeConnection([row, row | guest | {"balloon.current": 524288 + 131072}], domain)
    source = LibvirtSource(Clock(), connection=conn)  # type: ignore[arg-type]
    first, second = (await source.read())[0], (await source.read())[0]
    assert first.memory == MemoryCounters(size_bytes=512 * MIB, min_bytes=256 * MIB, max_bytes=1024 * MIB)
    assert second.memory == MemoryCounters(
        size_bytes=640 * MIB,
        min_bytes=256 * MIB,
        max_bytes=1024 * MIB,
        used_bytes=300000 * KIB,
        available_bytes=200000 * KIB,
        swap_in_bytes=8.0 * KIB,
    )
    assert domain.reads == 1
    host = await source.host()  # the node's memory (getInfo, MiB) and what the domain holds, from the same round
    assert host is not None
    assert (host.memory_bytes, host.vm_memory) == (15_872 * MIB, {"web 1": 640 * MIB})
