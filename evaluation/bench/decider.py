"""``hotplug bench decider``: what one decider process sustains through a real nats-server.

Two phases against a real ``hotplug decider`` (policy ``default``) and an embedded nats-server:
* throughput: samples for N VMs offered at paced rates (10k/s and up, then halving the gap between the highest
  offer taken in full and the lowest not, twice); samples/s is the rate decided on at the highest offer the decider
  took in full (under 1% shed). A flood (as fast as the broker takes them) is
  reported apart: the decider takes everything in, decides on each VM's newest sample and sheds the ones a
  newer sample replaced before their turn (services/decider/mailbox.py);
* latency: N VMs sampled at 1 Hz (N samples/s), each VM's load swinging between busy and idle, starved in
  the first seconds of each busy spell, so the policy keeps growing it; latency is from a sample's publication
  to the command it caused reaching a subscriber. This process also plays the actuator: a command's target
  becomes the VM's size in its next sample (and a VM that reached 16 vCPUs starts again from 4).

Each paced offer also counts the CPU seconds of the decider, the broker and this process (the publisher): at the
sustained offer, the decider's CPU per sample says what one decider process decides per core whatever else shares
the machine, and the three processes' cores say how much of the machine the whole offer took.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import psutil

from evaluation.bench.common import machine, percentile, ready_service
from hotplug.harness.recorder import BusWatcher
from hotplug.harness.scrape import metric_async
from shared import bus, subjects
from shared.broker import EmbeddedBroker
from shared.codec import encode
from shared.messages import MetricSample, ScaleCommand

LADDER = (10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 80_000)
REFINEMENTS = 2  # offers between the highest taken in full and the lowest not
OFFER_GRAIN = 500  # offers are whole multiples of this many samples a second


def between(taken: float, refused: float) -> float | None:
    """The offer halfway between one taken in full and one that was not, on the grain; None once they are a grain
    apart."""
    middle = round((taken + refused) / 2 / OFFER_GRAIN) * OFFER_GRAIN
    return float(middle) if taken < middle < refused else None


def cpu_seconds(pid: int | None) -> float:
    """The user and system CPU seconds process ``pid`` (None: this one) has used so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def sample(vm: str, vcpus: int, busy: bool, now: float, starved: bool = False) -> MetricSample:
    """A steady VM (97 % busy, or 10 %); ``starved``: all its vCPUs busy and as much demand again waiting."""
    return MetricSample(
        time=now,
        host="bench",
        vm=vm,
        online_vcpus=vcpus,
        min_vcpus=1,
        max_vcpus=16,
        cpu_used_cores=float(vcpus) if starved else vcpus * (0.97 if busy else 0.1),
        interval_s=1.0,
        source="bench",
        pressure_cores=float(vcpus) if starved else None,
    )


async def run(vms: int, seconds: float, work: Path) -> dict[str, object]:
    with EmbeddedBroker(work / "nats") as broker:
        decider = await ready_service(
            ["decider", "--nats", broker.url, "--policy", "default", "--max-sample-age", "3600"], work
        )
        try:
            nc = await bus.connect(broker.url, "bench", forever=False)
            names = [f"vm{i:05d}" for i in range(vms)]
            sizes = dict.fromkeys(names, 4)
            latencies: list[float] = []

            class Actuator(BusWatcher):
                """Plays the actuator: a command's target becomes the VM's size in its next sample."""

                def on_command(self, command: ScaleCommand) -> None:
                    sizes[command.vm] = command.vcpu_change()[1]
                    if command.sample_time is not None:
                        latencies.append(time.time() - command.sample_time)

            await Actuator().attach(nc, samples=False, results=False)
            subject = {vm: subjects.metrics("bench", vm) for vm in names}

            async def counts() -> tuple[float, float]:
                return (
                    await metric_async(decider.metrics_url, "hotplug_messages_received_total", kind="metric"),
                    await metric_async(
                        decider.metrics_url, "hotplug_messages_dropped_total", kind="metric", reason="shed"
                    ),
                )

            assert broker.pid is not None  # running: this is its context
            processes = {"decider": decider.pid, "broker": broker.pid, "publisher": None}
            cpu_used: dict[str, float] = {}  # CPU seconds of each process over the last offer

            async def offer(rate: float | None, duration: float) -> tuple[int, float, float, float]:
                """Samples at ``rate`` per second (None: as fast as the broker takes them), at a steady load (as
                most of a fleet is most of the time: after a first resize per VM, samples cost the decider a
                decision but rarely a command). Returns (published, decided, shed, seconds until caught up)."""
                received0, shed0 = await counts()
                cpu0 = {name: cpu_seconds(pid) for name, pid in processes.items()}
                started = time.perf_counter()
                published = 0
                while (elapsed := time.perf_counter() - started) < duration:
                    now = time.time()
                    batch = len(names) if rate is None else max(0, int(rate * elapsed) - published)
                    for k in range(batch):
                        vm = names[(published + k) % len(names)]
                        await nc.publish(subject[vm], encode(sample(vm, sizes[vm], True, now)))
                    published += batch
                    await nc.flush()
                    if rate is not None:
                        await asyncio.sleep(0.005)
                last, last_change = await counts(), time.perf_counter()
                while time.perf_counter() - last_change < 1.0:  # until the decider has caught up
                    await asyncio.sleep(0.2)
                    current = await counts()
                    if current != last:
                        last, last_change = current, time.perf_counter()
                cpu_used.update({name: cpu_seconds(pid) - cpu0[name] for name, pid in processes.items()})
                return published, last[0] - received0, last[1] - shed0, last_change - started

            # flood: offered as fast as the broker takes them; the decider sheds what a newer sample replaced
            flood_published, flood_decided, flood_shed, flood_s = await offer(None, seconds)
            flood_decider_cpu = cpu_used["decider"]
            # sustained: the highest paced rate decided on in full (under 1% shed)
            sustained, decided_per_s = 0.0, 0.0
            sustained_cpu: dict[str, float] = {}  # at the sustained offer: each process's cores, the decider's µs
            sustained_us: float | None = None

            async def takes(rate: float) -> bool:
                nonlocal sustained, decided_per_s, sustained_us
                published, decided, shed, took = await offer(rate, 3.0)
                if shed > 0.01 * published or decided < 0.99 * published:
                    return False
                sustained, decided_per_s = rate, decided / took
                sustained_cpu.update({name: used / took for name, used in cpu_used.items()})
                sustained_us = cpu_used["decider"] / decided * 1e6
                return True

            refused: float | None = None
            for rate in LADDER:
                if not await takes(rate):
                    refused = rate
                    break
            for _ in range(REFINEMENTS):
                middle = None if refused is None else between(sustained, refused)
                if middle is None:
                    break
                if not await takes(middle):
                    refused = middle

            # latency at 1 Hz per VM, the VMs' samples spread over the second as many collectors' would be
            latencies.clear()
            slices = 20
            per_slice = -(-vms // slices)
            tick = 0
            next_slot = time.monotonic()
            end = next_slot + seconds
            while next_slot < end:
                part = (tick % slices) * per_slice
                second = tick // slices
                for i in range(part, min(part + per_slice, vms)):
                    vm = names[i]
                    # Each VM swings every 10 s, staggered, between busy and idle, and is starved for the first
                    # 3 s of each busy spell: about one growth order per VM per 20 s (a policy that waits for
                    # evidence does not shrink it within the run); shrunk back to 4 when it tops out.
                    busy = ((second + i) // 10) % 2 == 0
                    starved = busy and (second + i) % 10 < 3
                    if sizes[vm] >= 16:
                        sizes[vm] = 4
                    await nc.publish(subject[vm], encode(sample(vm, sizes[vm], busy, time.time(), starved)))
                await nc.flush()
                tick += 1
                next_slot += 1.0 / slices
                await asyncio.sleep(max(0.0, next_slot - time.monotonic()))
            await asyncio.sleep(1.0)
            await nc.close()
        finally:
            await decider.stop_async()
    return {
        "bench": "decider",
        "vms": vms,
        "samples_per_s": round(decided_per_s),
        "sustained_offer_per_s": sustained,
        # what one decider process decides per second of its own CPU, at the sustained offer
        "decider_cpu_us_per_sample": None if sustained_us is None else round(sustained_us, 2),
        "samples_per_decider_cpu_s": round(1e6 / sustained_us) if sustained_us else None,
        # the cores each process kept busy at the sustained offer (the machine has "cpus")
        "cores_at_sustained": {name: round(cores, 2) for name, cores in sustained_cpu.items()},
        "flood": {
            "published": flood_published,
            "intake_per_s": round(flood_published / flood_s),
            "decided_per_s": round(flood_decided / flood_s),
            "shed": int(flood_shed),
            # the decider's CPU per sample decided, its intake of the samples it shed included
            "decider_cpu_us_per_decided": round(flood_decider_cpu / flood_decided * 1e6, 2) if flood_decided else None,
        },
        "offered_at_1hz_per_s": vms,
        "commands": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        **machine(),
    }


def bench_decider(vms: int, seconds: float = 5.0) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="hp-bench-") as tmp:
        return asyncio.run(run(vms, seconds, Path(tmp)))
