"""Event-driven pressure on a real QEMU guest (TCG): a load step inside the guest is met by a plug before the
collector's next regular sample.

The test guest looks at its CPU pressure every 100 ms and says ``PSI cpu ...`` on its control channel when a task
waited (shared/qemu/init.sh); the ``qemu`` source follows the guest's control log and asks the collector for an
urgent round; the decider grows on it at once. With the collector sampling every 5 s, a plug within that time can
only come from the urgent sample. Real processes on an embedded nats-server, started as ``hotplug bench loop``
starts them (``evaluation.bench.loop.loop_services``). Needs qemu-system-x86_64; in CI it must run, elsewhere it
skips. Under ``-n`` it is in xdist group "qemu" (XDIST_GROUPS in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from evaluation.bench.loop import loop_services
from hotplug.harness.poll import eventually
from hotplug.harness.recorder import Recorder
from shared import bus
from shared.broker import EmbeddedBroker
from shared.messages import MetricSample, ScaleCommand
from shared.qemu.image import ensure_image
from shared.qemu.vm import DIR_ENV, QemuVm
from tests.conftest import require_tool

pytestmark = pytest.mark.external  # needs a tool from the OS (see require_tool)

INTERVAL_S = 5.0  # regular samples this far apart: a plug sooner than that was not brought by one
# Three busy loops on one vCPU, not the benchmark's two: the PSI line counts the runnable tasks at the moment it is
# said, which can be before the guest's shell has started the last loop; with three, two loops and the line's own
# reader still make one more than the vCPU (a loaded CI run once saw the line say one too few with two).
BUSY_LOOPS = 3
VM = "vm-01"


def regular_after(recorder: Recorder, since: float) -> list[MetricSample]:
    return [s for s in recorder.samples if s.vm == VM and not s.urgent and s.time > since]


def grows(recorder: Recorder) -> list[ScaleCommand]:
    return [c for c in recorder.commands if c.vm == VM and (c.target_vcpus or 0) > (c.seen_vcpus or 0)]


@pytest.mark.timeout(300)
async def test_a_load_step_in_a_real_guest_is_met_by_a_plug_made_on_an_urgent_sample_before_the_next_regular_one(
    tmp_path: Path,
) -> None:
    require_tool("qemu-system-x86_64", "qemu-system-x86")
    root = Path(f"/tmp/hq-urgent-{os.getpid()}")  # unix socket paths must stay short: not under tmp_path
    shutil.rmtree(root, ignore_errors=True)
    image = await asyncio.to_thread(ensure_image)
    vm = await asyncio.to_thread(QemuVm.start, VM, image, max_vcpus=2, vcpus=1, root=root)
    try:
        with EmbeddedBroker(tmp_path / "nats") as broker:
            nc = await bus.connect(broker.url, "test", forever=False)
            recorder = Recorder()
            await recorder.attach(nc)
            services = await loop_services(broker.url, "qemu", 1, tmp_path, {DIR_ENV: str(root)}, INTERVAL_S)
            try:
                # The step right after a regular sample: the next one is a whole interval away, and the urgent
                # sample's interval (from this one) is mostly the step's, so the eager rule sees it.
                await eventually(lambda: regular_after(recorder, 0.0), timeout=60, what="a regular sample")
                before = regular_after(recorder, 0.0)[-1]
                assert before.online_vcpus == 1 and not grows(recorder)
                await asyncio.to_thread(vm.send, f"busy {BUSY_LOOPS}")
                seen: dict[str, object] = {}

                def grown() -> bool:
                    """A grow command, and what had come of the regular samples by the time it was heard."""
                    if grows(recorder) and not seen:
                        seen["regular"] = regular_after(recorder, before.time)
                    return bool(seen)

                await eventually(grown, timeout=INTERVAL_S * 4, what="a grow command")
                command = grows(recorder)[0]
                assert seen["regular"] == [], "the next regular sample came before the grow"
                [driving] = [s for s in recorder.samples if s.vm == VM and s.time == command.sample_time]
                assert driving.urgent, driving
                # and its pressure is the load's, said with the PSI line, not the last STAT line's (from before it):
                # a policy that weighs pressure (default) sees the demand beyond the one vCPU
                assert (driving.pressure_cores or 0.0) > 0, driving
                assert command.time - before.time < INTERVAL_S
                result = await recorder.result_of(command.id, timeout_s=60)
                assert result is not None and result.ok, result
                assert (result.vcpus_after or 0) == 2
            finally:
                for service in services:
                    await service.stop_async()
                await nc.close()
    finally:
        await asyncio.to_thread(vm.stop)
        shutil.rmtree(root, ignore_errors=True)
