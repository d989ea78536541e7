"""The VirtualBox driver, client, admin commands and collector source, against the stand-in VBoxManage
(tests/standins/vboxmanage.py), which follows the documented behaviour of VirtualBox 6.1 and 7.x:
VirtualBox itself cannot run on these machines."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from hotplug.harness.poll import a_window
from hotplug.harness.processes import run_hotplug
from services.actuator.drivers.base import DriverError
from services.actuator.drivers.virtualbox import VirtualBoxDriver
from services.collector.rates import sample_from
from services.collector.sources.base import Reading
from services.collector.sources.virtualbox import VirtualBoxSource
from shared.clock import Clock
from shared.messages import ErrorCode
from shared.virtualbox import VBoxManage, classify, parse_list, parse_machinereadable
from tests.standins import vboxmanage as standin
from tests.vbox_fixtures import STANDIN, VBoxHome

# Every error text of docs/virtualbox.md §5 (and the lock error of §4), with the code the project reports.
DOC_ERRORS = [
    ("Could not find a registered machine named 'web1'", ErrorCode.VM_NOT_FOUND),
    ("Could not find a registered machine with UUID {0c5e0000-0000-0000-0000-000000000000}", ErrorCode.VM_NOT_FOUND),
    ("Machine 'web1' is not currently running.", ErrorCode.VM_NOT_RUNNING),
    ("Machine 'web1' is not currently running", ErrorCode.VM_NOT_RUNNING),
    ("CPU hotplug is not enabled", ErrorCode.HOTPLUG_DISABLED),
    ("CPU id exceeds number of possible CPUs [0:3]", ErrorCode.CPU_ID_OUT_OF_RANGE),
    ("CPU 2 is already attached", ErrorCode.ALREADY_ATTACHED),
    ("CPU index exceeds maximum CPU count (must be in range [0:64])", ErrorCode.CPU_ID_OUT_OF_RANGE),
    ("CPU 3 is not attached", ErrorCode.NOT_ATTACHED),
    ("Invalid CPU number '0'.\nIt is not possible to detach CPU 0", ErrorCode.CPU0),
    ("Invalid CPU number '33'.\nCPU 0 is already attached", ErrorCode.CPU_ID_OUT_OF_RANGE),
    ("The machine is not mutable or running (state is Saved)", ErrorCode.VM_NOT_RUNNING),
    ("Invalid machine state: Paused", ErrorCode.VM_NOT_RUNNING),
    ("Hot-Remove was aborted because the CPU may still be used by the guest", ErrorCode.GUEST_REFUSED),
    ("Hot-Remove failed (vrc=VERR_INTERNAL_ERROR)", ErrorCode.UNKNOWN),
    ("Hot-Remove failed (rc=VERR_INTERNAL_ERROR)", ErrorCode.UNKNOWN),
    ("Could not add CPU to the machine (VERR_INTERNAL_ERROR)", ErrorCode.UNKNOWN),
    ("The machine 'web1' is already locked for a session (or being unlocked)", ErrorCode.VM_NOT_RUNNING),
]


@pytest.mark.parametrize("prog", ["VBoxManage", "VBoxManage.exe"])
@pytest.mark.parametrize(("text", "code"), DOC_ERRORS)
def test_every_documented_error_text_maps_to_its_code(text: str, code: ErrorCode, prog: str) -> None:
    stderr = "".join(f"{prog}: error: {line}\n" for line in text.split("\n"))
    stderr += (
        f"{prog}: error: Details: code VBOX_E_VM_ERROR (0x80bb0003), component ConsoleWrap, interface "
        f'IConsole, callee nsISupports\n{prog}: error: Context: "HotUnplugCPU(n)" at line 414 of file '
        f"VBoxManageControlVM.cpp\n"
    )
    error = classify(stderr)
    assert error.code is code
    assert text.split("\n")[-1] in error.message
    assert "Details:" not in error.message


def test_parsers_follow_the_documented_formats() -> None:
    fields = parse_machinereadable(
        'name="a \\"b\\" c"\nEncryption:     disabled\ncpus=4\n"odd=key"="v"\nCfgFile="C:\\\\VMs\\\\a.vbox"\n'
    )
    assert fields == {"name": 'a "b" c', "cpus": "4", "odd=key": "v", "CfgFile": "C:\\VMs\\a.vbox"}
    listing = (
        '"web "1"" {0c5e1234-0000-0000-0000-000000000000}\n"<inaccessible>" {0C5E1234-0000-0000-0000-00000000000A}\n'
    )
    assert parse_list(listing) == [
        ('web "1"', "0c5e1234-0000-0000-0000-000000000000"),
        ("<inaccessible>", "0c5e1234-0000-0000-0000-00000000000a"),
    ]


@pytest.mark.parametrize("version", ["6.1", "7.0"])
async def test_driver_plugs_lowest_free_and_unplugs_highest(
    vbox: VBoxHome, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VBOX_VERSION", version)
    vbox.create("web1", max_vcpus=4, attached=1)
    driver = VirtualBoxDriver(VBoxManage(str(STANDIN)))
    assert (await driver.read("web1")).online_vcpus == 1
    await driver.plug("web1")
    await driver.plug("web1")
    assert vbox.attached("web1") == [0, 1, 2]
    await driver.unplug("web1")
    assert vbox.attached("web1") == [0, 1]
    controls = [c for c in vbox.calls() if "controlvm" in c]
    assert [c[-2:] for c in controls] == [["plugcpu", "1"], ["plugcpu", "2"], ["unplugcpu", "2"]]
    view = await driver.read("web1")
    assert (view.online_vcpus, view.max_vcpus, view.min_vcpus) == (2, 4, 1)


async def test_driver_reports_its_host_every_running_vm_managed_or_not(vbox: VBoxHome) -> None:
    vbox.create("web1", max_vcpus=4, attached=2)
    vbox.create("idle", max_vcpus=4, attached=1, running=False)  # powered off: takes no core
    standin.create_vm("fixed", cpus=3)  # hot-plug off: all its CPUs are its
    assert vbox.run("startvm", "fixed").returncode == 0
    host = await VirtualBoxDriver(VBoxManage(str(STANDIN))).host_view()
    assert host.vms == {"web1": 2, "fixed": 3}
    assert host.cpus == os.cpu_count()


@pytest.mark.parametrize(
    ("setup", "op", "code"),
    [
        ("missing", "plug", ErrorCode.VM_NOT_FOUND),
        ("off", "plug", ErrorCode.VM_NOT_RUNNING),
        ("full", "plug", ErrorCode.CPU_ID_OUT_OF_RANGE),
        ("only-cpu0", "unplug", ErrorCode.CPU0),
        ("guest-none", "unplug", ErrorCode.GUEST_REFUSED),
        ("guest-stuck", "unplug", ErrorCode.GUEST_REFUSED),
        ("no-hotplug", "plug", ErrorCode.HOTPLUG_DISABLED),
    ],
)
async def test_driver_failures_carry_stable_codes(vbox: VBoxHome, setup: str, op: str, code: ErrorCode) -> None:
    name = "vm-x"
    if setup == "off":
        vbox.create(name, running=False)
    elif setup == "full":
        vbox.create(name, max_vcpus=2, attached=2)
    elif setup == "only-cpu0":
        vbox.create(name, max_vcpus=2, attached=1)
    elif setup.startswith("guest-"):
        vbox.create(name, max_vcpus=2, attached=2)
        standin.set_guest(name, setup.removeprefix("guest-"))
    elif setup == "no-hotplug":
        standin.create_vm(name, cpus=2)
        assert vbox.run("startvm", name).returncode == 0
    driver = VirtualBoxDriver(VBoxManage(str(STANDIN)))
    with pytest.raises(DriverError) as info:
        await (driver.plug(name) if op == "plug" else driver.unplug(name))
    assert info.value.code is code
    assert info.value.message


async def test_vm_names_cannot_inject_anything(vbox: VBoxHome) -> None:
    # A short path: the name holds it three times, and the stand-in names a file after the VM (255 bytes at most).
    canary = Path(tempfile.mkdtemp(prefix="hp-")) / "pwned"
    name = f"web 1; touch {canary} $(touch {canary}) `touch {canary}` \"q\" 'q' | & > <"
    vbox.create(name, max_vcpus=3, attached=1)
    driver = VirtualBoxDriver(VBoxManage(str(STANDIN)))
    await driver.plug(name)
    await driver.unplug(name)
    assert vbox.attached(name) == [0]
    assert not canary.exists()
    assert ["-q", "controlvm", name, "plugcpu", "1"] in vbox.calls()
    canary.parent.rmdir()


def test_admin_commands(vbox: VBoxHome) -> None:
    standin.create_vm("db", cpus=1)
    done = run_hotplug("vbox", "prepare", "db", "--max-vcpus", "8", "--start-vcpus", "2")
    assert done.returncode == 0, done.stderr
    assert "2 of 8 vCPUs attached" in done.stdout
    assert vbox.attached("db") == [0, 1]
    assert vbox.run("startvm", "db").returncode == 0
    refused = run_hotplug("vbox", "prepare", "db", "--max-vcpus", "8")
    assert refused.returncode == 1
    assert "power it off first" in refused.stderr
    grown = run_hotplug("vbox", "set", "db", "--vcpus", "4")
    assert grown.returncode == 0, grown.stderr
    assert json.loads(grown.stdout) == {"vm": "db", "ok": True, "vcpus_before": 2, "vcpus_after": 4}
    status = run_hotplug("vbox", "status", "--json")
    [row] = json.loads(status.stdout)
    assert (row["name"], row["state"], row["vcpus"], row["max_vcpus"], row["hotplug"]) == ("db", "running", 4, 8, True)
    standin.set_guest("db", "none")
    failed = run_hotplug("vbox", "set", "db", "--vcpus", "3")
    assert failed.returncode == 1
    assert "guest-refused: Hot-Remove was aborted because the CPU may still be used by the guest" in failed.stderr
    missing = run_hotplug("vbox", "set", "nope", "--vcpus", "3")
    assert missing.returncode == 1
    assert "vm-not-found: Could not find a registered machine named 'nope'" in missing.stderr


async def test_source_reads_the_vm_process_per_attached_vcpu(vbox: VBoxHome) -> None:
    vbox.create("busy vm", max_vcpus=4, attached=2)
    standin.set_load("busy vm", 1.0)
    source = VirtualBoxSource(VBoxManage(str(STANDIN)), Clock())

    def busy(first: dict[str, Reading], second: dict[str, Reading]) -> bool:
        sample = sample_from(first["busy vm"], second["busy vm"], "h", source.name)
        return sample is not None and 0.4 < sample.cpu_used_cores < 1.3

    async def readings() -> dict[str, Reading]:
        return {r.vm: r for r in await source.read()}

    # The stand-in's busy process gets a core only when the machine has one to give: window after window until one
    # shows it (a_window), rather than one sleep that a loaded machine turns into a failure.
    first, second = await a_window(readings, 1.0, busy, timeout=60, what="a window with the busy VM on a core")
    sample = sample_from(first["busy vm"], second["busy vm"], "h", source.name)
    assert sample is not None
    assert (sample.online_vcpus, sample.max_vcpus) == (2, 4)
    assert 0.4 < sample.cpu_used_cores < 1.3
    assert sample.per_vcpu_busy is not None
    assert len(sample.per_vcpu_busy) == 2  # EMT-0 and EMT-1, the attached ones
    assert sum(sample.per_vcpu_busy) > 0.4
    assert sample.pressure_cores is None  # host-side waiting is contention, not demand
    host = await source.host()  # this machine, and the VM's attached CPUs as the driver reads them
    assert host is not None
    assert (host.cpus, dict(host.vms)) == (os.cpu_count(), {"busy vm": 2})
    assert host.host_wait_seconds is not None and len(host.host_wait_seconds) == 2  # its two EMT threads
    assert vbox.run("controlvm", "busy vm", "poweroff").returncode == 0
    assert await source.read() == []
    host = await source.host()
    assert host is not None and dict(host.vms) == {}
