"""``hotplug bench loop``: end-to-end reaction on the simulator, from a load step to the vCPU plugged.

Real processes (simulator, collector at 1 s, decider with the seed's threshold rule and no waits, actuator)
on an embedded nats-server; the decisions themselves are measured by ``hotplug bench decisions``.
Each trial pins an idle VM's demand above its maximum at a random moment of the sampling second, and measures
until the result of the plug it causes is published; then the load is released and the VM shrinks back.
VMs have 1 vCPU at rest and 2 at most, so a result is exactly one plug, and the simulator's hot-plug delay is
50 ms, so the figure is the loop's own.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path

import msgspec

from evaluation.bench.common import machine, percentile, ready_service
from hotplug.harness.processes import policy_args
from hotplug.harness.recorder import Recorder
from shared import bus, subjects
from shared.broker import EmbeddedBroker
from shared.messages import ScaleResult
from shared.sim_api import LoadRequest

HOTPLUG_DELAY_S = 0.05
INTERVAL_S = 1.0


async def run(vms: int, trials: int, work: Path) -> dict[str, object]:
    with EmbeddedBroker(work / "nats") as broker:
        common = ["--nats", broker.url]
        services = [
            await ready_service(
                [
                    "simulator",
                    *common,
                    "--vms",
                    str(vms),
                    "--profiles",
                    "idle",
                    "--max-vcpus",
                    "2",
                    "--hotplug-delay",
                    str(HOTPLUG_DELAY_S),
                ],
                work,
            )
        ]
        services.append(await ready_service(["collector", *common, "--interval", str(INTERVAL_S)], work))
        # The reaction is the loop's (sample, decision, command, hot-plug, result), not a policy's patience: the
        # seed's rule with no wait and low thresholds grows on the first sample that shows the load (even the
        # part of a second after the step) and shrinks as soon as it is gone, so trials follow each other quickly
        # (the calm default would hold each VM for minutes).
        services.append(
            await ready_service(
                [
                    "decider",
                    *common,
                    *policy_args(
                        "threshold",
                        {
                            "threshold.sustain_s": 0,
                            "threshold.upper": 0.1,
                            "threshold.lower": 0.05,
                            "guard.up_cooldown_s": 0,
                            "guard.down_cooldown_s": 0,
                            "guard.warmup_s": 0,
                            "guard.max_changes": 1000,
                        },
                    ),
                ],
                work,
            )
        )
        services.append(
            await ready_service(["actuator", *common, "--max-changes", "1000"], work)
        )  # trials follow quickly
        try:
            nc = await bus.connect(broker.url, "bench", forever=False)
            plugs: dict[str, asyncio.Event] = {}
            plugged_at: dict[str, float] = {}

            class Plugs(Recorder):
                """The VMs' online counts, and the moment each awaited plug's result arrives."""

                def on_result(self, result: ScaleResult) -> None:
                    super().on_result(result)
                    if result.ok and (result.vcpus_after or 0) > (result.vcpus_before or 0) and result.vm in plugs:
                        plugged_at[result.vm] = time.time()
                        plugs[result.vm].set()

            recorder = Plugs()
            await recorder.attach(nc, commands=False)
            online = recorder.online
            load = subjects.simulator("local", "load")
            reactions: list[float] = []
            names = [f"vm-{i + 1:02d}" for i in range(vms)]
            rng = random.Random(7)

            async def trials_of(vm: str, count: int) -> None:
                for _ in range(count):
                    while online.get(vm) != 1:  # noqa: ASYNC110 (back at its floor before the next step)
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(rng.uniform(0, INTERVAL_S))  # a random moment of the sampling second
                    plugs[vm] = asyncio.Event()
                    started = time.time()
                    await nc.request(load, msgspec.json.encode(LoadRequest(vm=vm, demand_cores=64.0)), timeout=5)
                    await asyncio.wait_for(plugs[vm].wait(), timeout=30)
                    reactions.append(plugged_at[vm] - started)
                    del plugs[vm]
                    await nc.request(load, msgspec.json.encode(LoadRequest(vm=vm, demand_cores=None)), timeout=5)
                    await asyncio.sleep(INTERVAL_S * 2)

            per_vm = -(-trials // vms)
            await asyncio.wait_for(asyncio.gather(*(trials_of(vm, per_vm) for vm in names)), timeout=60 * per_vm)
            await nc.close()
        finally:
            for service in services:
                await service.stop_async()
    return {
        "bench": "loop",
        "trials": len(reactions),
        "interval_s": INTERVAL_S,
        "hotplug_delay_s": HOTPLUG_DELAY_S,
        "reaction_p50_s": round(percentile(reactions, 0.5), 3),
        "reaction_p95_s": round(percentile(reactions, 0.95), 3),
        "reaction_max_s": round(max(reactions), 3),
        **machine(),
    }


def bench_loop(vms: int = 4, trials: int = 20) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="hp-bench-") as tmp:
        return asyncio.run(run(vms, trials, Path(tmp)))
