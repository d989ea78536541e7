"""The qemu driver's unplug returns once the guest has let the vCPU go as every QMP query sees it: the slot free in
``query-hotpluggable-cpus`` and the vCPU gone from ``query-cpus-fast``. QEMU frees the slot first and removes the
vCPU when its thread has exited, and on a loaded machine a read between the two counted the vCPU still there (a
fresh-clone CI run's ``test_the_lifetime_hotadd_budget_is_refused_before_qemu_aborts``). A scripted QMP stands in
for QEMU: the two queries disagree for a few polls, as they did."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from services.actuator.drivers.qemu import QemuDriver
from shared.qemu.vm import QemuVm, VmState

BOOT = {"cpu-index": 0, "qom-path": "/machine/unattached/device[0]"}
HOT = {"cpu-index": 1, "qom-path": "/machine/peripheral/cpu-1"}


class ScriptedQmp:
    """QEMU as it unplugs ``HOT``: once asked, the slot stays taken for ``slot_polls`` looks, then the vCPU stays in
    ``query-cpus-fast`` for ``cpu_polls`` more."""

    def __init__(self, slot_polls: int, cpu_polls: int) -> None:
        self.slot_polls, self.cpu_polls = slot_polls, cpu_polls
        self.deleted = self.slot_free = False
        self.calls: list[str] = []

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        self.calls.append(command)
        if command == "device_del":
            assert arguments == {"id": "cpu-1"}
            self.deleted = True
            return {}
        if command == "query-hotpluggable-cpus":
            if self.deleted and self.slot_polls == 0:
                self.slot_free = True
            elif self.deleted:
                self.slot_polls -= 1
            return [{} if self.slot_free else {"qom-path": HOT["qom-path"]}, {"qom-path": BOOT["qom-path"]}]
        if command == "query-cpus-fast":
            if self.slot_free and self.cpu_polls > 0:
                self.cpu_polls -= 1
                return [BOOT, HOT]
            return [BOOT] if self.slot_free else [BOOT, HOT]
        raise AssertionError(f"unexpected QMP command {command}")


@pytest.fixture
def guest(tmp_path: Path) -> Path:
    vm = QemuVm("g", tmp_path)
    vm.dir.mkdir(parents=True)
    state = VmState(name="g", pid=os.getpid(), max_vcpus=2, boot_vcpus=1, maxcpus=3)
    vm.state_path.write_bytes(msgspec.json.encode(state))
    return tmp_path


async def test_unplug_waits_until_the_vcpu_has_left_query_cpus_fast_too(
    guest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    qemu = ScriptedQmp(slot_polls=2, cpu_polls=3)

    @contextlib.asynccontextmanager
    async def qmp(vm: QemuVm, monitor: bool = False) -> AsyncIterator[ScriptedQmp]:
        yield qemu

    monkeypatch.setattr(QemuVm, "qmp", qmp)
    driver = QemuDriver(guest)
    await driver.unplug("g")
    # the slot was seen free, and the driver kept looking until the vCPU list agreed (its first look, three with the
    # vCPU still there, and the one without it)
    assert qemu.slot_free and qemu.calls.count("query-cpus-fast") == 1 + 3 + 1
    assert (await driver.read("g")).online_vcpus == 1
