"""The guest agent's source: /proc and /sys parsing, bringing plugged CPUs online, run-queue pressure."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from services.collector.rates import sample_from
from services.collector.sources.guest import GuestSource, parse_cpu_list, parse_proc_stat, parse_psi_some_total
from shared.broker import EmbeddedBroker
from shared.clock import Clock


def test_parsers() -> None:
    assert parse_cpu_list("0-3,5,7-8\n") == [0, 1, 2, 3, 5, 7, 8]
    busy, running = parse_proc_stat("cpu  1 2 3 4 5 6 7 8\ncpu0 100 0 50 900 10 5 5 40\nprocs_running 3\n", 100.0)
    assert busy == {0: pytest.approx((100 + 0 + 50 + 5 + 5 + 40) / 100)}
    assert running == 3
    assert (
        parse_psi_some_total(
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=2500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        )
        == 2.5
    )


def fake_guest(root: Path, online: str, offline: list[int], running: int, ticks: int) -> None:
    cpu = root / "sys/devices/system/cpu"
    cpu.mkdir(parents=True, exist_ok=True)
    (cpu / "online").write_text(online + "\n")
    (cpu / "present").write_text("0-3\n")
    for n in range(1, 4):
        (cpu / f"cpu{n}").mkdir(exist_ok=True)
        (cpu / f"cpu{n}" / "online").write_text("0\n" if n in offline else "1\n")
    (root / "proc/pressure").mkdir(parents=True, exist_ok=True)
    (root / "proc/pressure/cpu").write_text(f"some avg10=1 avg60=1 avg300=1 total={ticks * 1000}\n")
    (root / "proc/stat").write_text(
        f"cpu0 {ticks} 0 0 0 0 0 0 0\ncpu1 {ticks} 0 0 0 0 0 0 0\nprocs_running {running}\n"
    )


async def test_new_cpus_are_brought_online_and_excess_runnable_is_pressure(tmp_path: Path) -> None:
    fake_guest(tmp_path, "0-1", offline=[2, 3], running=5, ticks=0)
    source = GuestSource("vm a", Clock(), root=tmp_path)
    first = (await source.read())[0]
    assert (tmp_path / "sys/devices/system/cpu/cpu2/online").read_text() == "1"
    assert (tmp_path / "sys/devices/system/cpu/cpu3/online").read_text() == "1"
    assert (first.online_vcpus, first.max_vcpus) == (2, 4)
    await asyncio.sleep(0.2)
    fake_guest(tmp_path, "0-1", offline=[], running=5, ticks=20)
    second = (await source.read())[0]
    sample = sample_from(first, second, "h", source.name)
    assert sample is not None
    dt = second.time - first.time
    assert sample.cpu_used_cores == pytest.approx(2 * 0.2 / dt, rel=0.01)
    assert sample.pressure_cores == pytest.approx(2.0)  # 5 runnable, minus the agent, on 2 CPUs
    assert sample.psi_some == pytest.approx(min(1.0, 0.02 / dt), rel=0.01)


async def test_no_online_leaves_cpus_alone(tmp_path: Path) -> None:
    fake_guest(tmp_path, "0", offline=[1, 2, 3], running=1, ticks=0)
    await GuestSource("v", Clock(), root=tmp_path, online_new_cpus=False).read()
    assert (tmp_path / "sys/devices/system/cpu/cpu1/online").read_text() == "0\n"


async def test_reads_this_machine() -> None:
    source = GuestSource("here", Clock(), online_new_cpus=False)
    first = (await source.read())[0]
    await asyncio.sleep(0.3)
    second = (await source.read())[0]
    sample = sample_from(first, second, "h", source.name)
    assert sample is not None
    assert sample.online_vcpus >= 1
    assert sample.per_vcpu_busy is not None
    assert len(sample.per_vcpu_busy) == sample.online_vcpus
    assert 0 <= sample.cpu_used_cores <= sample.online_vcpus + 0.5


async def test_agent_command_publishes_the_guests_view(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., object]
) -> None:
    from hotplug.harness.recorder import Recorder
    from shared import subjects
    from tests.conftest import eventually

    watch = Recorder()
    await watch.attach(nc, commands=False, results=False, metrics_subject=subjects.metrics("node1", "my vm"))
    got = watch.samples
    start_service(
        "agent",
        "--nats",
        broker.url,
        "--vm",
        "my vm",
        "--host",
        "node1",
        "--interval",
        "0.3",
        "--no-online",
    )
    await eventually(lambda: got, timeout=15, what="a sample from the agent")
    assert got[0].source == "agent"
    assert got[0].vm == "my vm"
    assert got[0].pressure_cores is not None
