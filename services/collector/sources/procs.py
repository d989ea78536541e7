"""Collector source ``psutil``: plain host processes as VMs (a QEMU or VBoxHeadless process, or any other).

CPU time comes from psutil per process and per thread; waiting time from the kernel's per-thread
schedstat (nanoseconds spent runnable on a run queue), the host-side sign of demand that found no CPU.
A process's vCPUs are the CPUs it may run on (its affinity).

The host is this machine (``psutil.cpu_count()`` CPUs), and the watched processes are its VMs, each holding the
vCPUs its affinity allows. Their run-queue wait is already their pressure, so host wait is left unknown.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass

import psutil

from services.collector.sources.base import HostReading, Reading
from services.collector.sources.threads import read_threads
from shared.clock import Clock
from shared.errors import UsageError


@dataclass(frozen=True)
class ProcessSpec:
    """``NAME=PID`` or ``NAME=REGEX`` (matched against the command line) from the command line."""

    vm: str
    pid: int | None = None
    pattern: str | None = None

    @classmethod
    def parse(cls, text: str) -> ProcessSpec:
        vm, sep, target = text.partition("=")
        if not sep or not vm or not target:
            raise UsageError(f"expected NAME=PID or NAME=REGEX, got {text!r}")
        if target.isdigit():
            return cls(vm=vm, pid=int(target))
        try:
            re.compile(target)
        except re.error as exc:
            raise UsageError(f"{text!r}: not a regular expression ({exc})") from exc
        return cls(vm=vm, pattern=target)


def schedstat_wait_seconds(pid: int) -> float | None:
    """Total run-queue wait of all threads of ``pid``, in seconds; None where schedstat is unavailable."""
    threads = read_threads(pid)
    return None if threads is None else sum(t.wait_seconds for t in threads)


class ProcessSource:
    name = "psutil"

    def __init__(self, specs: list[ProcessSpec], clock: Clock) -> None:
        self.specs = specs
        self.clock = clock
        self._procs: dict[str, psutil.Process] = {}
        self._host: HostReading | None = None

    def _find(self, spec: ProcessSpec) -> psutil.Process | None:
        cached = self._procs.get(spec.vm)
        if cached is not None and cached.is_running():
            return cached
        proc: psutil.Process | None = None
        if spec.pid is not None:
            try:
                proc = psutil.Process(spec.pid)
            except psutil.NoSuchProcess:
                proc = None
        elif spec.pattern is not None:
            regex = re.compile(spec.pattern)
            for candidate in psutil.process_iter(["pid", "cmdline"]):
                cmdline = " ".join(candidate.info.get("cmdline") or [])
                if candidate.pid != os.getpid() and regex.search(cmdline):
                    proc = candidate
                    break
        if proc is not None:
            self._procs[spec.vm] = proc
        return proc

    def _read_one(self, spec: ProcessSpec, now: float) -> Reading | None:
        proc = self._find(spec)
        if proc is None:
            return None
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                threads = proc.threads()
                affinity = len(proc.cpu_affinity() or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self._procs.pop(spec.vm, None)
            return None
        host_cpus = psutil.cpu_count() or 1
        online = affinity or host_cpus
        return Reading(
            vm=spec.vm,
            time=now,
            online_vcpus=online,
            min_vcpus=1,
            max_vcpus=max(host_cpus, online),
            cpu_seconds=times.user + times.system,
            per_vcpu_seconds={str(t.id): t.user_time + t.system_time for t in threads},
            waiting_core_seconds=schedstat_wait_seconds(proc.pid),
        )

    def _read_all(self, now: float) -> list[Reading]:
        readings = (self._read_one(spec, now) for spec in self.specs)
        return [r for r in readings if r is not None]

    async def read(self) -> list[Reading]:
        # psutil reads /proc (and may walk every process to find one): in a worker thread, off the event loop
        now, self._host = self.clock.now(), None
        readings = await asyncio.to_thread(self._read_all, now)
        vms = {r.vm: r.online_vcpus for r in readings}
        self._host = HostReading(time=now, cpus=psutil.cpu_count() or os.cpu_count() or 1, vms=vms)
        return readings

    async def host(self) -> HostReading | None:
        """This machine and the watched processes this round's read found."""
        return self._host

    async def close(self) -> None:
        self._procs.clear()
