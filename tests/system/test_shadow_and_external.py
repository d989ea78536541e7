"""Deciders are swappable: an external decider (examples/, nats-py and JSON only) drives the loop while a
shadow decider runs beside it, and ``hotplug compare`` scores both."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared import subjects
from shared.broker import EmbeddedBroker
from shared.messages import ScaleCommand, ScaleResult
from tests.conftest import REPO, ServiceProcess, eventually


async def test_external_decider_drives_the_loop_and_a_shadow_is_scored(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    commands: list[ScaleCommand] = []
    results: list[ScaleResult] = []
    proposals: list[ScaleCommand] = []

    async def on(msg: Msg) -> None:
        if msg.subject.startswith(subjects.PROPOSALS):
            proposals.append(msgspec.json.decode(msg.data, type=ScaleCommand))
        elif msg.subject.startswith(subjects.COMMANDS):
            commands.append(msgspec.json.decode(msg.data, type=ScaleCommand))
        else:
            results.append(msgspec.json.decode(msg.data, type=ScaleResult))

    for subject in (subjects.ALL_COMMANDS, subjects.ALL_RESULTS, subjects.ALL_PROPOSALS):
        await nc.subscribe(subject, cb=on)
    await nc.flush()
    common = ["--nats", broker.url]
    start_service("simulator", *common, "--vms", "2", "--profiles", "idle", "--hotplug-delay", "0.05")
    start_service("collector", *common, "--interval", "0.5")
    start_service("actuator", *common)
    start_service("decider", *common, "--policy", "default", "--name", "shadow-default", "--shadow")
    external = subprocess.Popen(  # noqa: ASYNC220 (a start does not wait; the child is awaited below)
        [sys.executable, str(REPO / "examples" / "external_decider.py"), broker.url, "ext"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        load = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "hotplug", "load", "vm-01", "4", "--nats", broker.url],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert load.returncode == 0, load.stderr
        await eventually(
            lambda: any(r.ok and (r.vcpus_after or 0) > (r.vcpus_before or 0) for r in results),
            timeout=30,
            what="a plug ordered by the external decider",
        )
        await eventually(lambda: len(proposals) >= 10, timeout=20, what="shadow proposals")
    finally:
        external.terminate()
        await asyncio.to_thread(external.wait, timeout=10)
    assert commands
    assert {c.decider for c in commands} == {"ext"}  # the shadow commands nothing
    assert {p.decider for p in proposals} == {"shadow-default"}
    assert all(p.sample_time is not None for p in proposals)
    command_ids = {c.id for c in commands}
    await asyncio.sleep(0.5)
    assert {r.command_id for r in results} <= command_ids

    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hotplug", "compare", "--nats", broker.url, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["policies"]) == {"active", "shadow-default", "oracle"}
    assert report["vms"] == 2
    assert report["steps"] > 10
    assert report["policies"]["oracle"]["unmet_pct"] == 0
    for scores in report["policies"].values():
        assert scores["alloc_core_hours"] > 0
