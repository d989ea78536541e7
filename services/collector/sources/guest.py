"""Collector source ``agent``: the guest's own view, read inside a Linux VM (``hotplug agent --vm NAME``).

From /proc/stat: busy time per online CPU and the number of runnable tasks (``procs_running``); from
/sys/devices/system/cpu: which CPUs are online and how many could be; from /proc/pressure/cpu: PSI
``some`` (time during which a runnable task waited). Runnable tasks beyond the online CPUs are demand the
VM could not run: integrated over time they are its pressure. It also brings newly plugged CPUs online
where the guest does not do it itself (no Guest Additions, no udev rule). Given a PSI trigger, it watches CPU
pressure (``watch_pressure``: ``services.collector.sources.psi_watch``) so that the collector samples at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from services.collector.sources.base import Reading
from services.collector.sources.psi_watch import PsiWatch
from services.collector.urgent import TriggerSpec
from shared.clock import Clock

log = logging.getLogger(__name__)

BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (not idle, iowait)


def parse_cpu_list(text: str) -> list[int]:
    """``0-3,5`` → [0, 1, 2, 3, 5]."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


def parse_proc_stat(text: str, hz: float) -> tuple[dict[int, float], int]:
    """Busy seconds per CPU, and procs_running."""
    busy: dict[int, float] = {}
    running = 0
    for line in text.splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            numbers = [int(v) for v in values]
            busy[int(name[3:])] = sum(numbers[i] for i in BUSY_FIELDS if i < len(numbers)) / hz
        elif line.startswith("procs_running "):
            running = int(line.split()[1])
    return busy, running


def parse_psi_some_total(text: str) -> float | None:
    """Seconds of ``some`` stall from /proc/pressure/cpu (``total=`` is in microseconds)."""
    for line in text.splitlines():
        if line.startswith("some "):
            for field in line.split():
                if field.startswith("total="):
                    return int(field[6:]) / 1e6
    return None


class RunQueueIntegral:
    """Core-seconds of runnable tasks beyond the online CPUs, integrated (trapezoid) over successive reads."""

    def __init__(self) -> None:
        self.total = 0.0
        self._last: tuple[float, int] | None = None

    def add(self, now: float, excess: int) -> float:
        if self._last is not None and now > self._last[0]:
            self.total += (now - self._last[0]) * (self._last[1] + excess) / 2
        self._last = (now, excess)
        return self.total


class GuestSource:
    name = "agent"

    def __init__(
        self,
        vm: str,
        clock: Clock,
        root: Path = Path("/"),
        online_new_cpus: bool = True,
        trigger: TriggerSpec | None = None,
    ) -> None:
        self.vm = vm
        self.clock = clock
        self.root = root
        self.online_new_cpus = online_new_cpus
        self.trigger = trigger
        self.hz = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        self._waiting = RunQueueIntegral()

    def _cpu_dir(self) -> Path:
        return self.root / "sys/devices/system/cpu"

    def bring_cpus_online(self) -> list[int]:
        """Write 1 to every ``cpuN/online`` that reads 0; returns the CPUs brought online."""
        done = []
        for path in sorted(self._cpu_dir().glob("cpu[0-9]*/online")):
            try:
                if path.read_text().strip() == "0":
                    path.write_text("1")
                    done.append(int(path.parent.name[3:]))
            except OSError as exc:
                log.warning("cannot bring %s online: %s", path.parent.name, exc)
        for cpu in done:
            log.info("brought cpu%d online", cpu)
        return done

    def watch_pressure(self, fired: Callable[[], None]) -> PsiWatch:
        """The guest's PSI trigger on ``/proc/pressure/cpu``, calling ``fired`` on the running loop each time it fires;
        OSError where the kernel has none (an old kernel, psi=0) or no trigger was given."""
        if self.trigger is None:
            raise OSError("no PSI trigger was given")
        watch = PsiWatch(self.trigger, fired, asyncio.get_running_loop(), self.root / "proc/pressure/cpu")
        log.info("PSI trigger %r set: urgent samples on CPU pressure", watch.spec.text())
        return watch

    async def read(self) -> list[Reading]:
        # /proc and /sys are files: read (and written) in a worker thread, off the event loop
        return await asyncio.to_thread(self._read, self.clock.now())

    def _read(self, now: float) -> list[Reading]:
        if self.online_new_cpus:
            self.bring_cpus_online()
        busy, runnable = parse_proc_stat((self.root / "proc/stat").read_text(), self.hz)
        online = parse_cpu_list((self._cpu_dir() / "online").read_text())
        try:
            possible = len(parse_cpu_list((self._cpu_dir() / "present").read_text()))
        except FileNotFoundError:
            possible = len(online)
        try:
            psi = parse_psi_some_total((self.root / "proc/pressure/cpu").read_text())
        except OSError:
            psi = None
        # procs_running counts this agent too; what is runnable beyond the online CPUs had to wait.
        waiting = self._waiting.add(now, max(0, runnable - 1 - len(online)))
        per_cpu = {f"{cpu:04d}": busy[cpu] for cpu in online if cpu in busy}
        return [
            Reading(
                vm=self.vm,
                time=now,
                online_vcpus=len(online),
                min_vcpus=1,
                max_vcpus=max(possible, len(online)),
                cpu_seconds=sum(per_cpu.values()),
                per_vcpu_seconds=per_cpu,
                waiting_core_seconds=waiting,
                psi_some_seconds=psi,
            )
        ]

    async def close(self) -> None:
        return None
