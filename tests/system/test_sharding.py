"""Scale-out: deciders in a group share the hosts through the metrics stream's partitions (one partition per
host, so one decider plans each host whole). Three deciders (two, then a third joining) over two simulated
hosts: every VM is decided by exactly one, the one rendezvous hashing assigns its host, and the joining decider
takes its VMs over with the state the others kept in KV."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import pytest
from nats.aio.client import Client

from hotplug.harness.recorder import Recorder
from services.decider.sharding import owned_partitions, owner
from shared import subjects
from shared.broker import EmbeddedBroker
from tests.conftest import LIVELY_DECIDER, ServiceProcess, eventually, metric


def two_hosts() -> tuple[str, str]:
    """Two host names whose partitions d1 and d2 own one each, the second of which d3 takes when it joins (a
    fixed choice: the hashing is fixed)."""
    names = [f"h{i}" for i in range(1, 100)]
    two, three = ["d1", "d2"], ["d1", "d2", "d3"]

    def owners(host: str) -> tuple[str, str]:
        p = subjects.partition_of(host)
        return owner(two, p), owner(three, p)

    return next(n for n in names if owners(n) == ("d1", "d1")), next(n for n in names if owners(n) == ("d2", "d3"))


def test_rendezvous_assignment_moves_only_the_newcomers_share() -> None:
    two = {p: owner(["d1", "d2"], p) for p in range(subjects.PARTITIONS)}
    three = {p: owner(["d1", "d2", "d3"], p) for p in range(subjects.PARTITIONS)}
    moved = [p for p in two if two[p] != three[p]]
    assert all(three[p] == "d3" for p in moved)  # nothing moves between the old members
    assert set(two.values()) == {"d1", "d2"}
    assert set(three.values()) == {"d1", "d2", "d3"}
    shares = [owned_partitions(["d1", "d2", "d3"], m) for m in ("d1", "d2", "d3")]
    assert sorted(p for share in shares for p in share) == list(range(subjects.PARTITIONS))
    assert owned_partitions(["d1"], "d9") == frozenset()


@pytest.mark.timeout(480)  # a hang guard above the waits' deadlines (roomy for a loaded machine), each ending early
async def test_each_vm_is_decided_by_exactly_one_member(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    watch = Recorder()
    await watch.attach(nc, samples=False, results=False)
    clock = ["--speed", "6", "--epoch", repr(time.time())]
    common = ["--nats", broker.url, *clock]
    hosts = two_hosts()
    for seed, host in enumerate(hosts, start=1):
        start_service("simulator", *common, "--host", host, "--vms", "12", "--seed", str(seed))
        start_service("collector", *common, "--host", host)
        start_service("actuator", *common, "--host", host)
    deciders = {
        name: start_service("decider", *common, "--group", "g", "--name", name, *LIVELY_DECIDER)
        for name in ("d1", "d2")
    }

    def decided_by(since: float) -> dict[tuple[str, str], set[str]]:
        out: dict[tuple[str, str], set[str]] = defaultdict(set)
        for at, c in zip(watch.command_arrivals, watch.commands, strict=True):
            if at >= since:
                out[(c.host, c.vm)].add(c.decider)
        return out

    def members(url: str) -> float:
        return metric(url, "hotplug_decider_partitions_owned")

    def held() -> list[float]:
        return [metric(d.metrics_url, "hotplug_decider_vms") for d in deciders.values()]

    await eventually(
        lambda: all(members(d.metrics_url) > 0 for d in deciders.values()),
        timeout=60,
        what="two members sharing the partitions",
    )
    # every VM held by exactly one member: the members' VM counts add up to the fleet, none empty
    await eventually(lambda: sum(held()) == 24 and min(held()) > 0, timeout=60, what="24 VMs split between 2")
    phase1 = time.monotonic() + 2
    # commands from a settled membership, until enough VMs were acted on to judge who decides each
    await eventually(lambda: len(decided_by(phase1)) >= 5, timeout=60, what="5 VMs acted on by 2 members")
    first = decided_by(phase1)

    deciders["d3"] = start_service("decider", *common, "--group", "g", "--name", "d3", *LIVELY_DECIDER)
    await eventually(lambda: members(deciders["d3"].metrics_url) > 0, timeout=60, what="d3 owning partitions")
    await eventually(
        lambda: sum(members(d.metrics_url) for d in deciders.values()) == subjects.PARTITIONS,
        timeout=60,
        what="the three shares covering every partition exactly once",
    )
    # d3 took the second host over; d2 holds none now
    await eventually(lambda: held() == [12, 0, 12], timeout=60, what="24 VMs split by host among 3")
    phase2 = time.monotonic() + 3
    await eventually(lambda: len(decided_by(phase2)) >= 5, timeout=60, what="5 VMs acted on by 3 members")
    second = decided_by(phase2)

    for vms, group in ((first, ["d1", "d2"]), (second, ["d1", "d2", "d3"])):
        assert len(vms) >= 5, f"too few VMs acted on to judge: {sorted(vms)}"
        for (host, vm), by in vms.items():
            assert by == {owner(group, subjects.partition_of(host))}, (host, vm, by)
    assert sum(held()) == 24
    assert metric(deciders["d3"].metrics_url, "hotplug_decider_state_resumed_total") > 0
    # the memory rule's state came over too (its windows, the order in flight), not only the vCPU engine's
    await eventually(
        lambda: "took over the memory of" in deciders["d3"].log(), timeout=30, what="d3 taking a VM's memory state over"
    )
