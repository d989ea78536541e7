"""The loop on a real three-node NATS cluster on loopback (nats-server from the wheel), streams replicated on
all three: a node killed mid-run, then the whole cluster restarted. Services reconnect by themselves; the audit
of the event log against what was seen live and what the simulated hypervisor did finds nothing lost, nothing
doubled, nothing out of bounds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from evaluation.audit import audit
from hotplug.harness.recorder import Recorder, hypervisor_ops, settle
from shared import bus, topology
from shared.cluster import EmbeddedCluster
from tests.conftest import LIVELY_DECIDER, ServiceProcess, eventually

REPLICAS = {bus.REPLICAS_ENV: "3"}
# A replicated stream's API round trip in a just-elected cluster can take longer than nats-py's 5-s default on a
# loaded machine (a CPU hog beside the suite): the test's own JetStream calls get a roomier deadline.
JS_TIMEOUT_S = 30.0


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedCluster]:
    monkeypatch.setenv(bus.REPLICAS_ENV, "3")
    with EmbeddedCluster(tmp_path / "cluster", 3) as c:
        yield c


async def test_streams_are_kept_on_three_nodes(cluster: EmbeddedCluster) -> None:
    nc = await bus.connect(cluster.url, "test", forever=False)
    try:
        await bus.ensure_streams(nc.jetstream(timeout=JS_TIMEOUT_S), reconcile=True, patience_s=120)
        info = await nc.jetstream(timeout=JS_TIMEOUT_S).stream_info(topology.EVENTS_STREAM)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and info.cluster.leader
        assert len(info.cluster.replicas or []) == 2  # the leader and two followers
    finally:
        await nc.close()


async def leader_of_events(nc: Client, cluster: EmbeddedCluster) -> int:
    info = await nc.jetstream(timeout=JS_TIMEOUT_S).stream_info(topology.EVENTS_STREAM)
    assert info.cluster is not None and info.cluster.leader
    return int(info.cluster.leader.removeprefix("n")) - 1


async def test_node_loss_and_cluster_restart_mid_run_lose_nothing_and_double_nothing(
    cluster: EmbeddedCluster, start_service: Callable[..., ServiceProcess]
) -> None:
    nc = await bus.connect(cluster.url, "test", forever=True)
    await bus.ensure_streams(nc.jetstream(timeout=JS_TIMEOUT_S), reconcile=True, patience_s=120)
    common = ["--nats", cluster.url, "--speed", "4", "--epoch", repr(time.time())]
    start_service("simulator", *common, "--vms", "4", "--hotplug-delay", "0.2", env=REPLICAS)
    for service in ("collector", "actuator"):
        start_service(service, *common, env=REPLICAS)
    decider = start_service("decider", *common, *LIVELY_DECIDER, env=REPLICAS)
    observer = Recorder()
    await observer.attach(nc)

    def results() -> int:
        return len(observer.results)

    await eventually(lambda: results() >= 2, timeout=40, what="the loop acting on the cluster")

    # the node leading the event log dies without a word
    lost = await leader_of_events(nc, cluster)
    cluster.kill(lost)
    before = results()
    await eventually(lambda: results() >= before + 2, timeout=60, what="the loop acting on two nodes")
    cluster.restart(lost)

    # every node at once, then back with the same stores
    cluster.stop()
    await asyncio.sleep(1.0)
    cluster.start()
    before = results()
    await eventually(lambda: results() >= before + 2, timeout=90, what="the loop acting after the restart")

    decider.stop()
    commands, stored_results = await settle(nc, timeout_s=60)
    ops = await hypervisor_ops(nc, "local")
    await nc.close()
    report = audit(
        commands,
        stored_results,
        seen_live=observer.seen,
        live_results=observer.results,
        ops_by_vm=ops,
        samples=observer.samples,
    )
    assert report.commands >= 6
    assert report.lost == 0, report
    assert report.duplicated == 0, report
    assert report.out_of_bounds == 0, report
