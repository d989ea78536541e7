"""Collector source ``psutil`` on real host processes: CPU time per process and thread, run-queue waiting."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from hotplug.harness.poll import a_window
from services.collector.rates import sample_from
from services.collector.sources.base import Reading
from services.collector.sources.procs import ProcessSource, ProcessSpec, schedstat_wait_seconds
from shared.clock import Clock

BUSY = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"


@pytest.fixture
def busy_process() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", BUSY, "hotplug-test-busy-marker"])
    yield proc
    proc.kill()
    proc.wait(timeout=10)


async def test_a_busy_process_reads_as_about_one_core(busy_process: subprocess.Popen[bytes]) -> None:
    source = ProcessSource(
        [
            ProcessSpec.parse(f"busy={busy_process.pid}"),
            ProcessSpec.parse("byname=hotplug-test-busy-marker"),
            ProcessSpec.parse("absent=999999999"),
        ],
        Clock(),
    )

    # The busy loop is given a core only when the machine has one to spare: beside other tests and a CPU hog it may
    # get a fifth of one. So the source's count is held against the kernel's own count of the process's CPU time,
    # read just before and just after each of the source's reads: what the source says it used over a window lies
    # between what the process got strictly inside the window and what it got around it.
    def used_s() -> float:
        times = psutil.Process(busy_process.pid).cpu_times()
        return float(times.user + times.system)

    async def read() -> tuple[float, dict[str, Reading], float]:
        before = used_s()
        readings = {r.vm: r for r in await source.read()}
        return before, readings, used_s()

    Read = tuple[float, dict[str, Reading], float]

    def ran(first: Read, second: Read) -> bool:
        return second[0] - first[2] > 0.05 and all(vm in first[1] and vm in second[1] for vm in ("busy", "byname"))

    (before_1, first, after_1), (before_2, second, after_2) = await a_window(
        read, 1.0, ran, timeout=40, what="a 1-s window in which the busy process ran"
    )
    assert set(second) == {"busy", "byname"}  # a process that is not there is left out, never "idle"
    tick = 1 / os.sysconf("SC_CLK_TCK")  # the kernel counts CPU time in ticks
    for vm in ("busy", "byname"):
        counted = second[vm].cpu_seconds - first[vm].cpu_seconds
        assert before_2 - after_1 - 2 * tick <= counted <= after_2 - before_1 + 2 * tick, vm
        sample = sample_from(first[vm], second[vm], "h", source.name)
        assert sample is not None
        assert 0 < sample.cpu_used_cores <= 1.2  # one busy thread: at most one core
        assert sample.per_vcpu_busy is not None
        assert max(sample.per_vcpu_busy) == pytest.approx(sample.cpu_used_cores, abs=0.1)  # all of it one thread's
        assert sample.online_vcpus >= 1
        assert sample.pressure_cores is not None
    host = await source.host()  # this machine, each process found holding the CPUs its affinity allows
    assert host is not None
    assert host.cpus == psutil.cpu_count()
    assert dict(host.vms) == {vm: second[vm].online_vcpus for vm in ("busy", "byname")}
    assert host.host_wait_seconds is None  # the processes' run-queue wait is their pressure


def test_schedstat_of_missing_process_is_unknown() -> None:
    assert schedstat_wait_seconds(999999999) is None


def test_bad_process_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="NAME=PID"):
        ProcessSpec.parse("nothing")
