"""``hotplug simulator --trace``: the simulator process plays a recorded trace on the shared clock, at --speed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from nats.aio.client import Client

from shared import subjects
from shared.broker import EmbeddedBroker
from shared.sim_api import StatsReply
from tests.conftest import ServiceProcess

SPEED = 10.0


async def demand_at(nc: Client, epoch: float, t: float) -> tuple[dict[str, float], dict[str, int]]:
    """Each VM's mean demand over simulated [t, t + 2] after ``epoch`` (used + waiting, from the counters)."""

    async def stats() -> StatsReply:
        reply = await nc.request(subjects.simulator("local", "stats"), b"{}", timeout=5)
        return msgspec.json.decode(reply.data, type=StatsReply)

    await asyncio.sleep(max(0.0, epoch + t / SPEED - time.time()))
    first = await stats()
    await asyncio.sleep(2 / SPEED)
    second = await stats()
    dt = second.time - first.time
    before = {v.vm: v.cpu_seconds + v.waiting_core_seconds for v in first.vms}
    return (
        {v.vm: (v.cpu_seconds + v.waiting_core_seconds - before[v.vm]) / dt for v in second.vms},
        {v.vm: v.max_vcpus for v in second.vms},
    )


async def test_the_simulator_plays_a_trace_from_the_epoch_at_speed(
    broker: EmbeddedBroker, nc: Client, tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    trace = tmp_path / "trace.csv"
    # web 0.5 then 3.5 from 20 s; db 1.5 then 0.25 from 40 s; db's last value lasts its 40-s step, so the file
    # repeats every 80 s
    trace.write_text(
        "time_s,vm,demand_vcpus,max_vcpus\n0,web,0.5,4\n20,web,3.5,4\n0,db,1.5,2\n40,db,0.25,2\n40,web,3.5,4\n"
    )
    epoch = time.time() + 5.0  # the run starts once the process is surely up; each segment lasts 2 wall s
    start_service(
        "simulator", "--nats", broker.url, "--trace", str(trace), "--speed", str(SPEED), "--epoch", repr(epoch)
    )
    demand, sizes = await demand_at(nc, epoch, 5.0)
    assert sizes == {"db": 2, "web": 4}
    assert abs(demand["web"] - 0.5) < 1e-6 and abs(demand["db"] - 1.5) < 1e-6
    demand, _ = await demand_at(nc, epoch, 25.0)
    assert abs(demand["web"] - 3.5) < 1e-6 and abs(demand["db"] - 1.5) < 1e-6
    demand, _ = await demand_at(nc, epoch, 45.0)
    assert abs(demand["db"] - 0.25) < 1e-6
    demand, _ = await demand_at(nc, epoch, 62.0)
    assert abs(demand["web"] - 3.5) < 1e-6 and abs(demand["db"] - 0.25) < 1e-6
    demand, _ = await demand_at(nc, epoch, 85.0)  # the trace started over at 80 s
    assert abs(demand["web"] - 0.5) < 1e-6 and abs(demand["db"] - 1.5) < 1e-6
