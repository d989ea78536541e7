"""Collector source ``virtualbox``: running VMs from ``VBoxManage list runningvms``, CPU from their host process.

Each VM runs in one host process (VBoxHeadless, VirtualBoxVM or VBoxSDL) started with ``--startvm <uuid>``;
it has one emulation thread per configured vCPU, ``EMT-<n>``. Busy time per attached vCPU is its EMT
thread's CPU time. Demand beyond the attached vCPUs is invisible from the host (an EMT thread waiting on the
host's run queue is host contention, which more vCPUs would not cure): the guest agent reports it. The
settings file says
which CPUs are attached; ``showvminfo`` is asked once per VM (for the file and the maximum), not every round.

Memory comes from VirtualBox's guest metrics (``metrics query <vm> Guest/RAM/Usage/Total,Free,Balloon,Cache``, kB),
set up once per run of a VM (``metrics setup --period 1 --samples 1 <vm> Guest/RAM/Usage``: nothing is collected
before, and a VM's metrics go when it stops). They exist only while the Guest Additions report: without them, or
before their first report, or when a metrics call fails, the VM's memory is left out of the round and its vCPU
reading kept. With them, a fresh ``showvminfo`` gives the size the driver reads (RAM − the configured balloon:
``shared.virtualbox.balloon_sizes``; the actuator moves the balloon between rounds), and the figures give the guest's
used and available memory (``guest_memory.virtualbox_counters``).

The host is this machine (``os.cpu_count()``: VirtualBox runs its VMs here) with every running VM's attached CPUs,
read from its settings file as the actuator's driver reads them, also for a VM whose process is not found; host
wait is the run-queue wait of the VMs' EMT threads (schedstat).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
import xml.etree.ElementTree as ET

import psutil

from services.collector.sources.base import HostReading, MemoryCounters, Reading
from services.collector.sources.guest_memory import virtualbox_counters
from services.collector.sources.threads import ThreadStat, read_threads
from shared.clock import Clock
from shared.virtualbox import (
    GUEST_RAM_FREE,
    GUEST_RAM_TOTAL,
    VBoxError,
    VBoxManage,
    VmInfo,
    balloon_sizes,
    read_cpu_tree,
)

log = logging.getLogger(__name__)

PROCESS_NAMES = {"VBoxHeadless", "VirtualBoxVM", "VBoxSDL", "VBoxHeadless.exe", "VirtualBoxVM.exe", "VBoxSDL.exe"}
_EMT = re.compile(r"^EMT(?:-(\d+))?$")
# A VM whose guest reports no memory has its metrics set up again this often: a VM restarted between two rounds lost
# them, and setting up anew discards nothing when there is nothing.
METRICS_SETUP_RETRY_S = 30.0


def find_vm_process(uuid: str, name: str) -> psutil.Process | None:
    """The host process running the VM: ``--startvm`` names its UUID (or, started by hand, its name)."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info.get("name") not in PROCESS_NAMES:
            continue
        cmdline = proc.info.get("cmdline") or []
        for flag, value in itertools.pairwise(cmdline):
            if flag == "--startvm" and value.strip("{}").lower() in (uuid.lower(), name.lower()):
                return proc
    return None


class VirtualBoxSource:
    name = "virtualbox"

    def __init__(self, vbox: VBoxManage, clock: Clock) -> None:
        self.vbox = vbox
        self.clock = clock
        self._info: dict[str, VmInfo] = {}
        self._procs: dict[str, psutil.Process] = {}
        self._metrics_setup: dict[str, float] = {}  # uuid -> when its guest metrics were set up (monotonic)
        self._host: HostReading | None = None

    async def _vm_info(self, name: str, uuid: str) -> VmInfo | None:
        info = self._info.get(uuid)
        if info is None:
            try:
                info = self._info[uuid] = await self.vbox.info(uuid)
            except VBoxError as exc:
                log.warning("showvminfo %s failed: %s", name, exc.message)
                return None
        return info

    def _process(self, uuid: str, name: str) -> psutil.Process | None:
        proc = self._procs.get(uuid)
        if proc is None or not proc.is_running():
            proc = find_vm_process(uuid, name)
            if proc is None:
                self._procs.pop(uuid, None)
                return None
            self._procs[uuid] = proc
        return proc

    def _read_host_side(
        self, name: str, uuid: str, cfgfile: str
    ) -> tuple[tuple[int, ...] | None, tuple[float, list[ThreadStat]] | None]:
        """The VM's attached vCPUs (its settings file), and its process's CPU seconds and threads; None for what
        cannot be read."""
        try:
            _, attached = read_cpu_tree(cfgfile)
        except (OSError, ET.ParseError) as exc:
            log.warning("cannot read the settings of %s: %s", name, exc)
            return None, None
        proc = self._process(uuid, name)
        if proc is None:
            return attached, None
        try:
            cpu = proc.cpu_times()
        except (OSError, psutil.Error) as exc:
            log.warning("cannot read %s: %s", name, exc)
            self._procs.pop(uuid, None)
            return attached, None
        return attached, (cpu.user + cpu.system, read_threads(proc.pid) or [])

    async def _memory(self, name: str, uuid: str) -> MemoryCounters | None:
        """The VM's memory, or None when its guest reports none or VirtualBox could not be asked: never an error."""
        try:
            set_up = self._metrics_setup.get(uuid)
            if set_up is None:
                await self.vbox.setup_guest_ram_metrics(uuid)
                set_up = self._metrics_setup[uuid] = time.monotonic()
            guest = await self.vbox.guest_ram_kb(uuid)
            if GUEST_RAM_TOTAL not in guest or GUEST_RAM_FREE not in guest:
                if time.monotonic() - set_up > METRICS_SETUP_RETRY_S:
                    del self._metrics_setup[uuid]
                return None
            info = self._info[uuid] = await self.vbox.info(uuid)
        except VBoxError as exc:
            log.warning("VirtualBox VM %s: memory left out of this round: %s", name, exc.message)
            return None
        return virtualbox_counters(balloon_sizes(info), guest)

    async def read(self) -> list[Reading]:
        self._host = None
        running = await self.vbox.list("runningvms")
        now = self.clock.now()
        readings = []
        online: dict[str, int] = {}
        wait: dict[str, float] = {}
        for name, uuid in running:
            info = await self._vm_info(name, uuid)
            if info is None:
                continue  # unknown, not idle: no sample
            # psutil, /proc and the VM's settings file: read in a worker thread, off the event loop
            attached, measured = await asyncio.to_thread(self._read_host_side, name, uuid, info.cfgfile)
            if attached is not None:
                online[name] = len(attached)
            if attached is None or measured is None:
                continue
            cpu_seconds, threads = measured
            emts = {}
            for t in threads:
                match = _EMT.match(t.name)
                if match:
                    emts[int(match.group(1) or 0)] = t
            wait.update({f"{uuid}:{emts[i].tid}": emts[i].wait_seconds for i in attached if i in emts})
            per_vcpu = {f"{i:04d}": emts[i].cpu_seconds for i in attached if i in emts}
            readings.append(
                Reading(
                    vm=name,
                    time=now,
                    online_vcpus=len(attached),
                    min_vcpus=1,
                    max_vcpus=min(info.cpus, 32),
                    cpu_seconds=cpu_seconds,
                    per_vcpu_seconds=per_vcpu or None,
                    memory=await self._memory(name, uuid),
                )
            )
        gone = set(self._info) - {uuid for _, uuid in running}
        for uuid in gone:  # a VM that stopped may come back reconfigured: ask again then
            self._info.pop(uuid, None)
            self._procs.pop(uuid, None)
            self._metrics_setup.pop(uuid, None)
        self._host = HostReading(time=now, cpus=os.cpu_count() or 1, vms=online, host_wait_seconds=wait)
        return readings

    async def host(self) -> HostReading | None:
        """This machine and its running VMs as this round's read saw them (None when that read failed)."""
        return self._host

    async def close(self) -> None:
        return None
