"""A decider from outside plugged into ``hotplug up --no-decider`` at ten times wall speed: the example decider
(nats-py and JSON only) as its own process keeps the shared clock, so the actuator applies its commands instead of
refusing them as expired, and it waits for each command's result before ordering the same VM again."""

from __future__ import annotations

import asyncio
import sys
from itertools import pairwise
from pathlib import Path

from hotplug.harness.poll import eventually
from hotplug.harness.processes import REPO, OutputProcess, stop_popen
from hotplug.harness.recorder import Recorder, settle
from shared import bus
from shared.messages import ErrorCode, ScaleResult

EXAMPLE = REPO / "examples" / "external_decider.py"


async def test_the_example_decider_drives_up_without_its_own_decider_at_ten_times_speed(tmp_path: Path) -> None:
    data_dir = tmp_path / "run"
    up = OutputProcess.hotplug(
        *("up", "--no-decider", "--vms", "4", "--speed", "10", "--duration", "3000"),
        *("--data-dir", str(data_dir), "--no-view"),
    )
    external: OutputProcess | None = None
    try:
        # Blocking waits are fine here: nothing runs on this event loop yet.
        url = up.wait_for(r"^nats: (\S+) ", timeout=60).group(1)
        epoch = float(up.wait_for(r"^clock: x10 from epoch ([\d.]+); .* --speed 10 --epoch \1$", timeout=60)[1])
        up.wait_for(r"^decider: none \(--no-decider\)", timeout=60)
        nc = await bus.connect(url, "test", forever=False)
        watch = Recorder()
        await watch.attach(nc, samples=False)
        external = OutputProcess([sys.executable, str(EXAMPLE), url, "ext"])

        def applied() -> list[ScaleResult]:
            """Results ok of commands sent 100 simulated seconds into the run: the shared clock then runs 90 s ahead
            of the wall's, so a command stamped with wall time (and a 30 s life) would be refused as expired."""
            ours = {c.id for c in watch.commands if c.decider == "ext" and c.time >= epoch + 100}
            return [r for r in watch.results if r.command_id in ours and r.ok and r.vcpus_after == r.target_vcpus]

        await eventually(
            lambda: len(applied()) >= 3, timeout=120, what="three of the outside decider's commands applied"
        )
        await eventually(
            lambda: any(": ok" in line and "result of ext-" in line for line in external.lines),
            timeout=30,
            what="the outside decider reading its results",
        )
        await asyncio.to_thread(stop_popen, external.proc)
        commands, results = await settle(nc, timeout_s=60)
        await nc.close()
    finally:
        if external is not None:
            await asyncio.to_thread(stop_popen, external.proc)
        await asyncio.to_thread(up.interrupt, 60)

    assert not any(line.startswith("decider metrics:") for line in up.lines), up.text()
    assert not (data_dir / "logs" / "decider.log").exists()
    assert commands and {c.decider for c in commands} == {"ext"}  # nobody else commands
    answers = {r.command_id: r for r in results}
    assert set(answers) == {c.id for c in commands}, "every command has its result"
    # Stamped on the shared clock, its commands are never refused as late.
    assert not [r for r in results if r.error_code is ErrorCode.EXPIRED], external.text()
    # One order at a time per VM: the next is stamped after the previous one's result (both on the shared clock).
    for vm in {c.vm for c in commands}:
        own = sorted((c for c in commands if c.vm == vm), key=lambda c: c.time)
        for first, second in pairwise(own):
            assert answers[first.id].time <= second.time, f"{vm}: {second.id} sent before {first.id} was answered"
