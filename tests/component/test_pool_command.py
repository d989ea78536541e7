"""``hotplug pool`` and ``hotplug events`` as processes against a real nats-server: a collector in this process
publishes its host's state (capacity from a ``[[host]]`` rule), Deferral events are in the event log, and the
command reports the host, the grows deferred now, and a host known from the metrics stream that sent no state."""

from __future__ import annotations

import asyncio
import json
import time

from nats.aio.client import Client

from hotplug.harness.processes import run_hotplug
from services.collector.service import Collector, CollectorMetrics
from services.collector.sources.base import HostReading, Reading
from shared import subjects
from shared.broker import EmbeddedBroker
from shared.codec import encode
from shared.config.schema import HostRule
from shared.messages import Deferral, DeferralAction, MetricSample
from shared.runtime import ServiceContext
from tests.component.conftest import Serve

HOST = "h1"


class OneVmHost:
    """A source whose host has 16 CPUs and one VM of 4 vCPUs, read at the wall clock (as the deciders' is)."""

    name = "fake"

    async def read(self) -> list[Reading]:
        now = time.time()
        return [Reading(vm="vm-01", time=now, online_vcpus=4, min_vcpus=1, max_vcpus=8, cpu_seconds=now)]

    async def host(self) -> HostReading | None:
        return HostReading(time=time.time(), cpus=16, vms={"vm-01": 4, "vm-02": 6}, waiting_vms=1, waiting_vcpus=8)

    async def close(self) -> None:
        return None


def deferral(vm: str, action: DeferralAction, since: float, *, host: str = HOST) -> Deferral:
    return Deferral(
        time=time.time(),
        host=host,
        vm=vm,
        action=action,
        decider="d1",
        vcpus=4,
        wanted_vcpus=8,
        granted_vcpus=6,
        since=since,
        priority=3,
        reason="host full: 6 of 8",
    )


async def test_pool_json_reports_the_host_state_and_the_grows_deferred_now(
    broker: EmbeddedBroker, nc: Client, serve: Serve
) -> None:
    js = nc.jetstream()
    since = time.time() - 120
    for event in (
        deferral("vm-01", DeferralAction.DEFERRED, since),
        deferral("vm-02", DeferralAction.DEFERRED, since),
        deferral("vm-02", DeferralAction.GRANTED, since),  # vm-02 got its cores: not deferred any more
    ):
        await js.publish(subjects.deferrals(event.host, event.vm), encode(event))
    # a host the metrics stream knows of, whose collector publishes no state
    silent = MetricSample(
        time=time.time(),
        host="h2",
        vm="db",
        online_vcpus=1,
        min_vcpus=1,
        max_vcpus=2,
        cpu_used_cores=0.1,
        interval_s=1.0,
        source="toy",
    )
    await js.publish(subjects.metrics("h2", "db"), encode(silent))

    async def body(ctx: ServiceContext[CollectorMetrics]) -> None:
        rules = [HostRule(match="h1", reserve_cpus=2, overcommit=1.5)]
        await Collector(ctx, OneVmHost(), 0.05, host_rules=rules).run()

    await serve(CollectorMetrics("collector"), body, HOST)
    done = await asyncio.to_thread(run_hotplug, "pool", "--json", "--nats", broker.url, "--wait", "3")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    h1, h2 = report["hosts"]
    # (16 - 2) x 1.5 = 21 vCPUs; 10 committed
    assert (h1["host"], h1["reported"], h1["source"], h1["cpus"]) == ("h1", True, "fake", 16)
    assert (h1["capacity_vcpus"], h1["committed_vcpus"], h1["free_vcpus"]) == (21, 10, 11)
    assert (h1["waiting_vms"], h1["waiting_vcpus"]) == (1, 8)
    [deferred] = h1["deferred"]
    assert (deferred["vm"], deferred["wanted_vcpus"], deferred["granted_vcpus"], deferred["priority"]) == (
        "vm-01",
        8,
        6,
        3,
    )
    assert deferred["reason"] == "host full: 6 of 8"
    assert deferred["age_s"] >= 120
    assert (h2["host"], h2["reported"], h2["capacity_vcpus"], h2["deferred"]) == ("h2", False, None, [])

    text = await asyncio.to_thread(run_hotplug, "pool", "--nats", broker.url, "--host", "h1", "--wait", "3")
    assert text.returncode == 0, text.stderr
    assert "capacity 21 vCPUs, committed 10, free 11" in text.stdout
    assert "vm-01  4 -> 8 vCPUs wanted, 6 granted, for 2m" in text.stdout
    assert "h2" not in text.stdout  # only the host asked for

    events = await asyncio.to_thread(run_hotplug, "events", "--nats", broker.url, "--format", "jsonl")
    assert events.returncode == 0, events.stderr
    records = [json.loads(line) for line in events.stdout.splitlines()]
    assert [(r["kind"], r["vm"], r["action"]) for r in records if r["kind"] == "deferral"] == [
        ("deferral", "vm-01", "deferred"),
        ("deferral", "vm-02", "deferred"),
        ("deferral", "vm-02", "granted"),
    ]


def test_pool_says_clearly_when_no_host_state_came(broker: EmbeddedBroker) -> None:
    done = run_hotplug("pool", "--nats", broker.url, "--wait", "0.5")
    assert done.returncode == 1
    assert "no host reported within 0.5 s (no HostState on hotplug.hosts.*)" in done.stdout
    assert "no HostState within 0.5 s" in done.stderr
    unreachable = run_hotplug("pool", "--nats", "nats://127.0.0.1:1", "--wait", "0.5")
    assert unreachable.returncode == 2
    assert "cannot reach NATS" in unreachable.stderr
