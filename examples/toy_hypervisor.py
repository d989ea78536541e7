"""A hypervisor from outside Hot-Plug Heaven, in one file: ``toyhv``, whose VMs are JSON files in a folder.

Importing this module registers three things: the collector source ``toyhv`` (it reads the files), the actuator
driver ``toyhv`` (it writes a VM's vCPU count into its file) and the hypervisor record ``toyhv`` (how ``hotplug up``
provisions it: it writes ``--vms`` files before the services start and removes them after; its own ``up`` option
``--toyhv-demand``, also ``toyhv_demand`` in the config file's ``[plugins.toyhv]`` table, the flag beating the file).
Name the file in ``$HOTPLUG_PLUGINS`` and ``up`` runs it, no line of Hot-Plug Heaven changed:

    HOTPLUG_PLUGINS=examples/toy_hypervisor.py hotplug up --hypervisor toyhv --vms 2 --toyhv-demand 3

Each VM keeps ``demand`` cores busy, as far as its vCPUs allow: with 1 vCPU and a demand of 3 it is saturated, so
the decider grows it, and the driver's write is what the source reads next. The collector and the actuator are
separate processes: they meet in the folder ``up`` names in ``$HOTPLUG_TOYHV_DIR``, as QEMU's source and driver meet
in its guests' folder. docs/hypervisors/adding-a-hypervisor.md walks through it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from hotplug.hypervisors import DEFAULT_VMS, HYPERVISORS, Hypervisor
from services.actuator.drivers.base import Driver, DriverError, VmView
from services.actuator.drivers.registry import DRIVERS
from services.collector.sources.base import Reading, Source
from services.collector.sources.registry import SOURCES
from shared.clock import Clock
from shared.errors import UsageError
from shared.messages import ErrorCode
from shared.runtime import ServiceContext

if TYPE_CHECKING:
    from hotplug.up import UpOptions

NAME = "toyhv"
DIR_ENV = "HOTPLUG_TOYHV_DIR"


# --- the hypervisor: a VM is a file ------------------------------------------------------------------------


class ToyVm(msgspec.Struct):
    vcpus: int
    max_vcpus: int
    demand: float  # cores the VM's work would use, given the vCPUs


def _folder() -> Path:
    folder = os.environ.get(DIR_ENV)
    if not folder:
        raise UsageError(f"the toyhv hypervisor needs ${DIR_ENV} (hotplug up --hypervisor toyhv sets it)")
    return Path(folder)


def _read(path: Path) -> ToyVm:
    return msgspec.json.decode(path.read_bytes(), type=ToyVm)


def _write(path: Path, vm: ToyVm) -> None:
    # Whole or not at all: the source in the other process never reads half a file.
    partial = path.with_suffix(".partial")
    partial.write_bytes(msgspec.json.encode(vm))
    os.replace(partial, path)


# --- its source and driver ---------------------------------------------------------------------------------


class ToyHvConfig(msgspec.Struct, frozen=True):
    """The folder comes from $HOTPLUG_TOYHV_DIR: nothing to set."""


class ToyHvSource:
    name = NAME

    def __init__(self, folder: Path, clock: Clock) -> None:
        self.folder = folder
        self.clock = clock
        # The files hold sizes, not counters: the busy seconds are summed here, from each reading to the next.
        self.busy: dict[str, tuple[float, float]] = {}  # vm: (time, cpu seconds)

    async def read(self) -> list[Reading]:
        now = self.clock.now()
        readings = []
        for path in sorted(self.folder.glob("*.json")):
            vm = _read(path)
            then, busy = self.busy.get(path.stem, (now, 0.0))
            busy += min(vm.demand, vm.vcpus) * (now - then)
            self.busy[path.stem] = (now, busy)
            readings.append(
                Reading(
                    vm=path.stem,
                    time=now,
                    online_vcpus=vm.vcpus,
                    min_vcpus=1,
                    max_vcpus=vm.max_vcpus,
                    cpu_seconds=busy,
                )
            )
        return readings

    async def close(self) -> None:
        pass


class ToyHvDriver:
    name = NAME

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, vm: str) -> Path:
        path = self.folder / f"{vm}.json"
        if not path.is_file():
            raise DriverError(ErrorCode.VM_NOT_FOUND, f"no toyhv VM {vm!r} in {self.folder}")
        return path

    async def read(self, vm: str) -> VmView:
        state = _read(self._path(vm))
        return VmView(vm=vm, online_vcpus=state.vcpus, min_vcpus=1, max_vcpus=state.max_vcpus)

    async def plug(self, vm: str) -> None:
        path = self._path(vm)
        state = _read(path)
        if state.vcpus >= state.max_vcpus:
            raise DriverError(ErrorCode.OUT_OF_BOUNDS, f"{vm} has all {state.max_vcpus} vCPUs already")
        _write(path, msgspec.structs.replace(state, vcpus=state.vcpus + 1))

    async def unplug(self, vm: str) -> None:
        path = self._path(vm)
        state = _read(path)
        if state.vcpus <= 1:
            raise DriverError(ErrorCode.CPU0, f"{vm} keeps its last vCPU")
        _write(path, msgspec.structs.replace(state, vcpus=state.vcpus - 1))

    async def close(self) -> None:
        pass


@SOURCES.register(NAME, ToyHvConfig)
def build_source(_config: ToyHvConfig, ctx: ServiceContext[Any]) -> Source:
    return ToyHvSource(_folder(), ctx.clock)


@DRIVERS.register(NAME, ToyHvConfig)
def build_driver(_config: ToyHvConfig, _ctx: ServiceContext[Any]) -> Driver:
    return ToyHvDriver(_folder())


# --- its record: how hotplug up runs it --------------------------------------------------------------------


class ToyHvUp(msgspec.Struct, frozen=True):
    """``up``'s own options for toyhv, declared as settings are: a field each, named as its flag (``--toyhv-demand``
    is ``toyhv_demand``), its description and default here, its flag and its ``[plugins.toyhv]`` key generated."""

    toyhv_demand: Annotated[float, msgspec.Meta(description="cores each VM keeps busy", extra={"metavar": "CORES"})] = (
        3.0
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.toyhv_demand <= 64.0:
            raise UsageError(f"--toyhv-demand takes cores from 0 to 64, got {self.toyhv_demand:g}")


@contextlib.asynccontextmanager
async def provision(options: UpOptions, data_dir: Path) -> AsyncIterator[Mapping[str, str]]:
    """``--vms`` VMs (default 6) with 1 vCPU each, before the services start; gone when the run ends."""
    own = RECORD.own(options)
    folder = data_dir / NAME
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(options.vms or DEFAULT_VMS):
        _write(folder / f"toy-{i + 1:02d}.json", ToyVm(vcpus=1, max_vcpus=options.max_vcpus, demand=own.toyhv_demand))
    print(f"toyhv: {options.vms or DEFAULT_VMS} VMs in {folder}", flush=True)
    try:
        yield {DIR_ENV: str(folder)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


RECORD: Hypervisor[ToyHvUp] = HYPERVISORS.register(
    Hypervisor(
        name=NAME,
        summary="toyhv (examples/toy_hypervisor.py): --vms VMs that are JSON files, each keeping --toyhv-demand busy",
        vms="VMs (files) to write for the run (default 6)",
        options=ToyHvUp,
        provision=provision,
    )
)
