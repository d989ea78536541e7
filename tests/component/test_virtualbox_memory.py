"""The VirtualBox balloon (``controlvm <vm> guestmemoryballoon <MB>``) through the stand-in VBoxManage, which follows
VirtualBox's source for it (tests/standins/vboxmanage.py says what is documented and what assumed): the command's
outputs and errors in both versions, and the driver's ``read_memory``/``resize_memory`` on top; and the guest's memory
metrics (``metrics setup``/``query``) the collector's ``virtualbox`` source reads beside the driver's size."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.actuator.drivers.base import DriverError
from services.actuator.drivers.virtualbox import VirtualBoxDriver
from services.actuator.reservations import Reservations
from services.collector.sources.base import MemoryCounters
from services.collector.sources.virtualbox import VirtualBoxSource
from shared.clock import Clock
from shared.config.schema import HostRule
from shared.messages import ErrorCode, Resource
from shared.pool import memory_capacity
from shared.units import GIB, MIB
from shared.virtualbox import (
    GUEST_RAM_METRICS,
    VBoxManage,
    balloon_floor_mb,
    classify,
    parse_machinereadable,
    parse_metrics_query,
)
from tests.standins import vboxmanage as standin
from tests.vbox_fixtures import STANDIN, VBoxHome


def _start(vbox: VBoxHome, name: str, memory_mb: int = 2048) -> None:
    standin.create_vm(name, cpus=1, memory_mb=memory_mb)
    done = vbox.run("startvm", name, "--type", "headless")
    assert done.returncode == 0, done.stderr


def _info(vbox: VBoxHome, name: str) -> dict[str, str]:
    done = vbox.run("showvminfo", name, "--machinereadable")
    assert done.returncode == 0, done.stderr
    return parse_machinereadable(done.stdout)


@pytest.mark.parametrize("version", ["6.1", "7.0"])
def test_the_balloon_is_set_silently_and_shown_in_showvminfo_and_the_settings_file(
    vbox: VBoxHome, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VBOX_VERSION", version)
    _start(vbox, "web 1")
    assert (_info(vbox, "web 1")["memory"], _info(vbox, "web 1")["GuestMemoryBalloon"]) == ("2048", "0")
    done = vbox.run("controlvm", "web 1", "guestmemoryballoon", "0x200")  # IPRT reads the base from the prefix
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert _info(vbox, "web 1")["GuestMemoryBalloon"] == "512"
    vm = standin.find_vm("web 1")
    assert vm is not None
    assert '<Guest memoryBalloonSize="512"/>' in Path(vm["cfgfile"]).read_text()


@pytest.mark.parametrize("version", ["6.1", "7.0"])
@pytest.mark.parametrize(
    ("args", "running", "needle", "code"),
    [
        (
            ["1843"],
            True,
            "Invalid memory balloon size: 1843 MB (must be in range [0, 1843] MB)",
            ErrorCode.OUT_OF_BOUNDS,
        ),
        (["-1"], True, "Error parsing guest memory balloon size '-1'", ErrorCode.OUT_OF_BOUNDS),
        (["512MB"], True, "Error parsing guest memory balloon size '512MB'", ErrorCode.OUT_OF_BOUNDS),
        ([], True, "Incorrect number of parameters", ErrorCode.UNKNOWN),
        (["512"], False, "Machine 'web1' is not currently running", ErrorCode.VM_NOT_RUNNING),
    ],
)
def test_the_balloon_commands_errors(
    vbox: VBoxHome,
    version: str,
    args: list[str],
    running: bool,
    needle: str,
    code: ErrorCode,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_VBOX_VERSION", version)
    if running:
        _start(vbox, "web1")
    else:
        standin.create_vm("web1", memory_mb=2048)
    done = vbox.run("controlvm", "web1", "guestmemoryballoon", *args)
    assert done.returncode == 1
    assert needle in done.stderr
    assert done.stdout == ""
    if args:  # the syntax error has no "VBoxManage: error:" line in 6.1 (it says "Syntax error:")
        assert classify(done.stderr).code is code
    assert _info(vbox, "web1")["GuestMemoryBalloon"] == "0"  # nothing was set


def test_the_largest_balloon_is_just_under_90_percent(vbox: VBoxHome) -> None:
    _start(vbox, "web1", memory_mb=1000)
    assert vbox.run("controlvm", "web1", "guestmemoryballoon", "900").returncode == 1
    assert vbox.run("controlvm", "web1", "guestmemoryballoon", "899").returncode == 0


async def test_the_driver_reads_ram_less_balloon_and_resizes_in_mib(vbox: VBoxHome) -> None:
    _start(vbox, "web1", memory_mb=2048)
    driver = VirtualBoxDriver(VBoxManage(str(STANDIN)))
    view = await driver.read_memory("web1")
    assert (view.size_bytes, view.requested_bytes, view.max_bytes) == (2048 * MIB,) * 3
    assert (view.min_bytes, view.step_bytes, view.method) == (512 * MIB, MIB, "balloon")  # a quarter of 2 GiB
    assert view.guest_total_bytes is None  # showvminfo does not say
    await driver.resize_memory("web1", 1536 * MIB)
    assert ["-q", "controlvm", "web1", "guestmemoryballoon", "512"] in vbox.calls()
    assert (await driver.read_memory("web1")).size_bytes == 1536 * MIB
    await driver.resize_memory("web1", 2048 * MIB)  # all of it back: the balloon at 0
    assert (await driver.read_memory("web1")).size_bytes == 2048 * MIB


async def test_the_drivers_host_view_holds_a_memory_grow_to_the_hosts_memory(vbox: VBoxHome, tmp_path: Path) -> None:
    """Every running VM's RAM less its balloon, from the showvminfo the view reads anyway; a grow that does not fit
    the host's memory (this machine's MemTotal, here a file of 4 GiB) is cut, then refused ``host-full``."""
    _start(vbox, "web 1", memory_mb=2048)
    _start(vbox, "db", memory_mb=1024)
    standin.create_vm("off", memory_mb=8192)  # powered off: holds nothing
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        4194304 kB\n")
    driver = VirtualBoxDriver(VBoxManage(str(STANDIN)), meminfo)
    await driver.resize_memory("web 1", 1536 * MIB)  # a balloon of 512 MiB
    view = await driver.host_view()
    assert (view.memory_bytes, view.vm_memory) == (4 * GIB, {"web 1": 1536 * MIB, "db": GIB})
    room = Reservations("h", Resource.MEMORY)
    capacity = memory_capacity((HostRule(match="*", reserve_memory="1280MiB"),), "h", view.memory_bytes)
    assert capacity is not None
    room.observe(view, capacity.capacity_bytes, room.ticket())
    cut = room.grant("web 1", 1536 * MIB, 2048 * MIB, MIB)  # 2.75 GiB, 1 GiB of it db's: web 1 gets 1.75 GiB
    assert cut.size == 1792 * MIB
    refusal = cut.refusal()
    assert refusal is not None and refusal.code is ErrorCode.HOST_FULL
    full = room.grant("db", GIB, 2 * GIB, MIB)  # web 1's grant stays reserved: nothing is left for db
    assert full.size == GIB
    refusal = full.refusal()
    assert refusal is not None and refusal.code is ErrorCode.HOST_FULL and refusal.message.startswith("granted 0B")


@pytest.mark.parametrize(
    ("setup", "target", "code"),
    [
        ("running", 3000 * MIB, ErrorCode.OUT_OF_BOUNDS),  # above its RAM: the balloon only takes from it
        ("running", 256 * MIB, ErrorCode.OUT_OF_BOUNDS),  # under the floor
        ("running", 1024 * MIB + 1, ErrorCode.OUT_OF_BOUNDS),  # not whole MiB
        ("no-additions", 1024 * MIB, ErrorCode.HOTPLUG_DISABLED),
        ("off", 1024 * MIB, ErrorCode.VM_NOT_RUNNING),
        ("missing", 1024 * MIB, ErrorCode.VM_NOT_FOUND),
    ],
)
async def test_the_drivers_refusals(vbox: VBoxHome, setup: str, target: int, code: ErrorCode) -> None:
    if setup == "off":
        standin.create_vm("web1", memory_mb=2048)
    elif setup != "missing":
        _start(vbox, "web1")
    if setup == "no-additions":
        standin.set_guest("web1", "none")
    driver = VirtualBoxDriver(VBoxManage(str(STANDIN)))
    with pytest.raises(DriverError) as refused:
        await driver.resize_memory("web1", target)
    assert refused.value.code is code and refused.value.message
    assert not [c for c in vbox.calls() if "guestmemoryballoon" in c]  # refused before VirtualBox was asked


def test_the_floor_never_passes_virtualboxs_own_limit() -> None:
    assert balloon_floor_mb(2048) == 512
    assert balloon_floor_mb(512) == 256
    assert balloon_floor_mb(200) == 200  # a VM smaller than the floor keeps all its RAM
    assert balloon_floor_mb(100_000) == 25_000
    for ram in (300, 1000, 4096, 65536):
        assert ram - balloon_floor_mb(ram) < 9 * ram // 10  # the balloon this leaves is one VirtualBox takes


def test_metrics_query_has_lines_without_values_until_setup_and_none_for_a_stopped_vm(vbox: VBoxHome) -> None:
    """docs/virtualbox.md §7: nothing is collected before ``setup``; a VM's metrics exist only while it runs."""
    _start(vbox, "web 1")
    query = ["metrics", "query", "web 1", ",".join(GUEST_RAM_METRICS)]
    before = vbox.run(*query)
    assert before.returncode == 0
    lines = before.stdout.splitlines()
    assert lines[0].split() == ["Object", "Metric", "Values"]
    assert lines[2] == f"{'web 1':<15} {'Guest/RAM/Usage/Total':<40} "  # a line, no values yet
    assert parse_metrics_query(before.stdout, GUEST_RAM_METRICS) == {}
    assert vbox.run("metrics", "setup", "--period", "1", "--samples", "2", "web 1", "Guest/RAM/Usage").stdout == ""
    after = vbox.run(*query).stdout
    assert f"{'web 1':<15} {'Guest/RAM/Usage/Total':<40} 2097152 kB, 2097152 kB" in after.splitlines()
    assert vbox.run("controlvm", "web 1", "poweroff").returncode == 0
    assert len(vbox.run(*query).stdout.splitlines()) == 2  # the header alone
    missing = vbox.run("metrics", "query", "nope")
    assert missing.returncode == 1
    assert classify(missing.stderr).code is ErrorCode.VM_NOT_FOUND


async def test_the_source_reports_the_drivers_size_and_the_guests_figures(vbox: VBoxHome) -> None:
    _start(vbox, "web 1", memory_mb=2048)
    standin.set_guest_memory("web 1", used_mb=700, cache_mb=300)
    vboxmanage = VBoxManage(str(STANDIN))
    source = VirtualBoxSource(vboxmanage, Clock())
    driver = VirtualBoxDriver(vboxmanage)

    async def memory() -> MemoryCounters | None:
        (reading,) = await source.read()
        return reading.memory

    first = await memory()
    view = await driver.read_memory("web 1")
    assert first is not None
    assert (first.size_bytes, first.min_bytes, first.max_bytes) == (view.size_bytes, view.min_bytes, view.max_bytes)
    assert (first.used_bytes, first.available_bytes) == (700 * MIB, (2048 - 700) * MIB)  # the cache is in free
    await driver.resize_memory("web 1", 1536 * MIB)
    second = await memory()  # the balloon the guest inflated is not counted as used
    assert second is not None
    assert (second.size_bytes, second.used_bytes, second.available_bytes) == (1536 * MIB, 700 * MIB, 836 * MIB)
    setups = [c for c in vbox.calls() if c[1:3] == ["metrics", "setup"]]
    assert setups == [["-q", "metrics", "setup", "--period", "1", "--samples", "1", setups[0][-2], "Guest/RAM/Usage"]]
    assert vbox.run("controlvm", "web 1", "poweroff").returncode == 0
    assert await source.read() == []
    assert vbox.run("startvm", "web 1", "--type", "headless").returncode == 0
    assert await memory() is not None  # a new run: its metrics set up again
    assert len([c for c in vbox.calls() if c[1:3] == ["metrics", "setup"]]) == 2


async def test_without_guest_additions_the_source_keeps_the_vcpus_and_reports_no_memory(vbox: VBoxHome) -> None:
    _start(vbox, "web 1")
    standin.set_guest("web 1", "none")
    source = VirtualBoxSource(VBoxManage(str(STANDIN)), Clock())
    (reading,) = await source.read()
    assert (reading.vm, reading.online_vcpus, reading.memory) == ("web 1", 1, None)
    assert len([c for c in vbox.calls() if c[1] == "showvminfo"]) == 1  # once per run, not again for a size


async def test_a_failing_metrics_call_leaves_memory_out_not_the_reading(vbox: VBoxHome, tmp_path: Path) -> None:
    _start(vbox, "web 1")
    failing = tmp_path / "VBoxManage"  # the stand-in, but every metrics call fails as an old VBoxSVC might
    failing.write_text(
        '#!/bin/sh\ncase "$2" in metrics) echo "VBoxManage: error: Code E_FAIL" >&2; exit 1;; esac\n'
        f'exec "{STANDIN}" "$@"\n'
    )
    failing.chmod(0o755)
    (reading,) = await VirtualBoxSource(VBoxManage(str(failing)), Clock()).read()
    assert (reading.vm, reading.memory) == ("web 1", None)
