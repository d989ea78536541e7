"""Collector source ``virtualbox``: running VMs from ``VBoxManage list runningvms``, CPU from their host process.

Each VM runs in one host process (VBoxHeadless, VirtualBoxVM or VBoxSDL) started with ``--startvm <uuid>``;
it has one emulation thread per configured vCPU, ``EMT-<n>``. Busy time per attached vCPU is its EMT
thread's CPU time. Demand beyond the attached vCPUs is invisible from the host (an EMT thread waiting on the
host's run queue is host contention, which more vCPUs would not cure): the guest agent reports it. The
settings file says
which CPUs are attached; ``showvminfo`` is asked once per VM (for the file and the maximum), not every round.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re

import psutil

from services.collector.sources.base import Reading
from services.collector.sources.threads import ThreadStat, read_threads
from shared.clock import Clock
from shared.virtualbox import VBoxError, VBoxManage, VmInfo, read_cpu_tree

log = logging.getLogger(__name__)

PROCESS_NAMES = {"VBoxHeadless", "VirtualBoxVM", "VBoxSDL", "VBoxHeadless.exe", "VirtualBoxVM.exe", "VBoxSDL.exe"}
_EMT = re.compile(r"^EMT(?:-(\d+))?$")


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
    ) -> tuple[tuple[int, ...], float, list[ThreadStat]] | None:
        """The VM's attached vCPUs (its settings file), its process's CPU seconds and its threads."""
        proc = self._process(uuid, name)
        if proc is None:
            return None
        try:
            _, attached = read_cpu_tree(cfgfile)
            cpu = proc.cpu_times()
        except (OSError, psutil.Error) as exc:
            log.warning("cannot read %s: %s", name, exc)
            self._procs.pop(uuid, None)
            return None
        return attached, cpu.user + cpu.system, read_threads(proc.pid) or []

    async def read(self) -> list[Reading]:
        running = await self.vbox.list("runningvms")
        now = self.clock.now()
        readings = []
        for name, uuid in running:
            info = await self._vm_info(name, uuid)
            if info is None:
                continue  # unknown, not idle: no sample
            # psutil, /proc and the VM's settings file: read in a worker thread, off the event loop
            found = await asyncio.to_thread(self._read_host_side, name, uuid, info.cfgfile)
            if found is None:
                continue
            attached, cpu_seconds, threads = found
            emts = {}
            for t in threads:
                match = _EMT.match(t.name)
                if match:
                    emts[int(match.group(1) or 0)] = t
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
                )
            )
        gone = set(self._info) - {uuid for _, uuid in running}
        for uuid in gone:  # a VM that stopped may come back reconfigured: ask again then
            self._info.pop(uuid, None)
            self._procs.pop(uuid, None)
        return readings

    async def close(self) -> None:
        return None
