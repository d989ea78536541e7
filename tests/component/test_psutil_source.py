"""Collector source ``psutil`` on real host processes: CPU time per process and thread, run-queue waiting."""

from __future__ import annotations

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

    # The busy loop is given a core only when the machine has one to spare: on a loaded machine (the other tests,
    # other work) a window may read less. Windows of 1 s are read until one shows it busy, within a deadline.
    async def read() -> dict[str, Reading]:
        return {r.vm: r for r in await source.read()}

    def busy(first: dict[str, Reading], second: dict[str, Reading]) -> bool:
        return all(
            (s := sample_from(first[vm], second[vm], "h", source.name)) is not None and s.cpu_used_cores > 0.5
            for vm in ("busy", "byname")
            if vm in first and vm in second
        )

    first, second = await a_window(read, 1.0, busy, timeout=40, what="a 1-s window with the busy process on a core")
    assert set(second) == {"busy", "byname"}  # a process that is not there is left out, never "idle"
    for vm in ("busy", "byname"):
        sample = sample_from(first[vm], second[vm], "h", source.name)
        assert sample is not None
        assert 0.5 < sample.cpu_used_cores <= 1.2
        assert sample.per_vcpu_busy is not None
        assert max(sample.per_vcpu_busy) > 0.5
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
