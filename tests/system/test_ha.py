"""Decider high availability: two replicas, one active by a lease in JetStream KV; the standby takes over
within a bounded time when the active one is killed, and the actuator refuses the old term's orders."""

from __future__ import annotations

import time
from collections.abc import Callable

from nats.aio.client import Client

from hotplug.harness.processes import sigkill
from hotplug.harness.recorder import Recorder
from hotplug.harness.scrape import metric_or_zero
from services.decider.lease import LeaseState, next_lease
from shared.broker import EmbeddedBroker
from shared.messages import ErrorCode
from tests.conftest import LIVELY_DECIDER, ServiceProcess, eventually, metric
from tests.system.test_faults import order, send


def test_lease_rules() -> None:
    assert next_lease(None, "a", now=10, ttl_s=5) == LeaseState("a", 1, 15)
    assert next_lease(LeaseState("a", 3, 12), "a", now=11, ttl_s=5) == LeaseState("a", 3, 16)  # renewal
    assert next_lease(LeaseState("a", 3, 12), "b", now=11, ttl_s=5) is None  # a live lease is respected
    assert next_lease(LeaseState("a", 3, 12), "b", now=12, ttl_s=5) == LeaseState("b", 4, 17)  # takeover, new term


async def test_standby_takes_over_and_old_terms_are_refused(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    watch = Recorder()
    await watch.attach(nc, samples=False)
    commands, results = watch.commands, watch.results
    common = ["--nats", broker.url, "--speed", "4", "--epoch", repr(time.time())]
    start_service("simulator", *common, "--vms", "6")
    start_service("collector", *common)
    start_service("actuator", *common)
    replicas = {
        name: start_service("decider", *common, *LIVELY_DECIDER, "--lease", "main", "--name", name, "--lease-ttl", "2")
        for name in ("a", "b")
    }

    def leads(replica: ServiceProcess) -> bool:
        # a killed replica not yet reaped has no endpoint: it leads nothing
        return replica.proc.poll() is None and metric_or_zero(replica.metrics_url, "hotplug_decider_leader") == 1

    def leaders() -> list[str]:
        return [name for name, replica in replicas.items() if leads(replica)]

    await eventually(lambda: len(leaders()) == 1, what="exactly one leader")
    await eventually(lambda: any(c.term == 1 for c in commands), timeout=30, what="orders in term 1")
    assert {c.decider for c in commands} == {"main"}
    [leader] = leaders()
    sigkill(replicas[leader].pid)
    # The bound is a deadline, not a measured time: the lease's time to live (2 s) and one renewal period, and room
    # for a loaded machine (a CPU hog beside the suite) to schedule the standby, its broker and this poll.
    await eventually(
        lambda: leaders() == [n for n in replicas if n != leader],
        timeout=12,
        interval=0.05,
        what="the standby taking over",
    )
    survivor = replicas[next(n for n in replicas if n != leader)]
    assert metric(survivor.metrics_url, "hotplug_decider_lease_term") == 2
    await eventually(lambda: any(c.term == 2 for c in commands), timeout=30, what="orders in term 2")
    # a late order of the deposed leader's term is refused, once the actuator knows term 2: it learns a term from
    # each command it answers (and reads the leases' terms once a second)
    term_2 = {c.id for c in commands if c.term == 2}
    await eventually(lambda: any(r.command_id in term_2 for r in results), timeout=30, what="a term-2 order answered")
    # (a long time to live: the actuator's clock runs 4 times faster than the wall clock the order is stamped with)
    await send(nc, late := order("vm-01", 1, 1, decider="main", term=1, ttl_s=3600))
    await eventually(lambda: [r for r in results if r.command_id == late.id], what="the late order's result")
    [result] = [r for r in results if r.command_id == late.id]
    assert result.error_code is ErrorCode.STALE_TERM
