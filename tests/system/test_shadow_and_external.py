"""Deciders are swappable: an external decider (examples/, nats-py and JSON only) drives the loop while a
shadow decider runs beside it, and ``hotplug compare`` scores both."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable

from nats.aio.client import Client

from hotplug.harness.processes import run_hotplug, stop_popen
from hotplug.harness.recorder import Recorder
from shared.broker import EmbeddedBroker
from tests.conftest import REPO, ServiceProcess, eventually


async def test_external_decider_drives_the_loop_and_a_shadow_is_scored(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    watch = Recorder()
    await watch.attach(nc, samples=False, proposals=True)
    commands, results, proposals = watch.commands, watch.results, watch.proposals
    common = ["--nats", broker.url]
    start_service("simulator", *common, "--vms", "2", "--profiles", "idle", "--hotplug-delay", "0.05")
    start_service("collector", *common, "--interval", "0.5")
    start_service("actuator", *common)
    start_service("decider", *common, "--policy", "default", "--name", "shadow-default", "--shadow")
    external = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "external_decider.py"), broker.url, "ext"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        load = await asyncio.to_thread(run_hotplug, "load", "vm-01", "4", "--nats", broker.url, timeout=30)
        assert load.returncode == 0, load.stderr
        await eventually(
            lambda: any(r.ok and (r.vcpus_after or 0) > (r.vcpus_before or 0) for r in results),
            timeout=30,
            what="a plug ordered by the external decider",
        )
        await eventually(lambda: len(proposals) >= 10, timeout=20, what="shadow proposals")
    finally:
        await asyncio.to_thread(stop_popen, external)
    assert commands
    assert {c.decider for c in commands} == {"ext"}  # the shadow commands nothing
    assert {p.decider for p in proposals} == {"shadow-default"}
    assert all(p.sample_time is not None for p in proposals)
    command_ids = {c.id for c in commands}
    await asyncio.sleep(0.5)
    assert {r.command_id for r in results} <= command_ids

    done = await asyncio.to_thread(run_hotplug, "compare", "--nats", broker.url, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["policies"]) == {"active", "shadow-default", "oracle"}
    assert report["vms"] == 2
    assert report["steps"] > 10
    assert report["policies"]["oracle"]["unmet_pct"] == 0
    for scores in report["policies"].values():
        assert scores["alloc_core_hours"] > 0
