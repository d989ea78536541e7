"""The whole memory loop on a real QEMU guest (TCG): the four services as processes give an idle guest's memory back,
then grow it again under a workload before the guest runs out, without an OOM kill.

One guest of 512 MiB boot RAM and a 1 GiB virtio-mem device, booted with 512 MiB of it plugged (something to give
back). The collector reads it with ``--source qemu``, the decider's memory rule runs with windows of seconds instead
of a day, the actuator moves it with ``--driver qemu``. Needs what ``test_qemu.py`` needs; skipped outside CI only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from hotplug.harness.poll import eventually
from hotplug.harness.recorder import Recorder
from shared.broker import EmbeddedBroker
from shared.messages import Resource, ScaleCommand, ScaleResult
from shared.qemu.image import GuestImage
from shared.qemu.vm import DIR_ENV, QemuVm
from shared.units import MIB
from tests.conftest import ServiceProcess
from tests.system.test_qemu import guest_says, image  # noqa: F401 (image: the guest image fixture, shared)

pytestmark = pytest.mark.external  # needs a tool from the OS
# Under `-n` (bin/test) this module is in xdist group "qemu" with the other QEMU modules: see XDIST_GROUPS.

HOST = "qemu-loop"
VM = "ml1"
BOOT_MB = 512
MAX_MB = 1536
PLUGGED_MB = 512
# The workload: CHUNKS × CHUNK_MB written to a tmpfs file, one chunk every PACE_S. 640 MiB is more than the guest has
# once it gave memory back (512 MiB) and less than the device's 1.5 GiB with the rule's headroom (1.25 × used +
# 128 MiB). Paced at ~32 MiB/s, as a workload that grows: a loop that samples each second must keep up with it, while
# a dd at TCG's full speed would outrun any sampling loop.
CHUNK_MB = 16
CHUNKS = 40
PACE_S = 0.5
FILL_BYTES = CHUNK_MB * CHUNKS * MIB
# The decider: the memory rule with windows of seconds (288 samples and 30 min by default), and a give-back of up to
# half the size at once, so the idle guest is back at its boot RAM in one shrink (1 GiB -> 512 MiB; by quarters it
# takes three, 10 s apart) and the workload meets a guest that is done shrinking. The default vCPU policy has nothing
# to do: the guest has one vCPU.
MEMORY_PARAMS = ("memory.window_samples=20", "memory.shrink_interval_s=10", "memory.max_shrink_fraction=0.5")
OOM_SIGNS = ("Out of memory", "Killed process")


@pytest.fixture
def root() -> Iterator[Path]:
    # unix socket paths must stay short: not under pytest's deep tmp_path
    path = Path(f"/tmp/hq-ml-{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    yield path
    for d in path.glob("*"):
        QemuVm(d.name, path).stop()
    shutil.rmtree(path, ignore_errors=True)


def memory_results(recorder: Recorder) -> list[ScaleResult]:
    return [r for r in recorder.results if r.resource is Resource.MEMORY]


def memory_commands(recorder: Recorder) -> list[ScaleCommand]:
    return [c for c in recorder.commands if c.resource is Resource.MEMORY]


def guest_total_kb(vm: QemuVm) -> int | None:
    stat = vm.guest_stat()
    return stat.mem_total_kb if stat else None


def oom_lines(vm: QemuVm) -> list[str]:
    log = vm.console_log.read_text(errors="replace")
    return [line for line in log.splitlines() if any(sign in line for sign in OOM_SIGNS)]


@pytest.mark.timeout(300)
async def test_an_idle_guest_gives_memory_back_and_grows_again_on_a_workload_without_an_oom_kill(
    image: GuestImage,  # noqa: F811 (the imported fixture)
    root: Path,
    broker: EmbeddedBroker,
    nc: Client,
    start_service: Callable[..., ServiceProcess],
) -> None:
    """Idle, the loop gives memory back (an ok memory result down, the guest's MemTotal down); then a 640 MiB tmpfs
    fill that does not fit makes it grow again (an ok result up) in time: the fill completes and the guest's console
    has no OOM kill. Every memory command got exactly one result, and the samples carried the guest's PSI memory."""
    vm = await asyncio.to_thread(
        QemuVm.start,
        VM,
        image,
        max_vcpus=1,
        memory_mb=BOOT_MB,
        max_memory_mb=MAX_MB,
        plugged_mb=PLUGGED_MB,
        root=root,
    )
    grown_kb: list[int] = []

    def plugged_seen() -> bool:  # the guest's own MemTotal with the boot-time plug online
        total = guest_total_kb(vm)
        if total is not None and total > (BOOT_MB + PLUGGED_MB // 2) * 1024:
            grown_kb.append(total)
        return bool(grown_kb)

    await eventually(plugged_seen, timeout=30, what="the guest's MemTotal with 512 MiB plugged")

    recorder = Recorder()
    await recorder.attach(nc)
    env = {DIR_ENV: str(root)}
    common = ["--nats", broker.url, "--host", HOST, "--epoch", repr(time.time())]
    start_service("collector", *common, "--source", "qemu", "--interval", "1", env=env)
    decider_params = [arg for param in MEMORY_PARAMS for arg in ("--param", param)]
    start_service("decider", *common, *decider_params, env=env)
    actuator = start_service("actuator", *common, "--driver", "qemu", env=env)

    def given_back() -> ScaleResult | None:
        return next(
            (
                r
                for r in memory_results(recorder)
                if r.ok
                and r.memory_before_bytes is not None
                and r.memory_after_bytes is not None
                and r.memory_after_bytes < r.memory_before_bytes
            ),
            None,
        )

    # the rule needs window_samples (20, at 1-s sampling) of calm samples before its first shrink
    await eventually(
        given_back, timeout=90, interval=0.5, what=f"a memory give-back; actuator log:\n{actuator.log()[-3000:]}"
    )
    shrink = given_back()
    assert shrink is not None
    assert (shrink.memory_before_bytes, shrink.memory_after_bytes) == ((BOOT_MB + PLUGGED_MB) * MIB, BOOT_MB * MIB)

    def total_fell() -> bool:
        total = guest_total_kb(vm)
        return total is not None and total < grown_kb[0]

    await eventually(total_fell, timeout=30, interval=0.5, what="the guest's MemTotal down after the give-back")

    # The workload: a tmpfs of its own (the initramfs's rootfs is capped at half the boot RAM), filled at a pace.
    mount = f"mkdir -p /mnt/fill && mount -t tmpfs -o size={MAX_MB}m fill /mnt/fill && echo mounted"
    assert await asyncio.to_thread(guest_says, vm, mount) == "mounted"
    # One line of about 200 characters: such a line once went unacknowledged in a loaded run, while the host held the
    # control connection unread and QEMU stopped the guest's output behind it (send_line now reads it).
    fill = (
        f"(i=0; while [ $i -lt {CHUNKS} ]; do "
        f"dd if=/dev/zero of=/mnt/fill/f bs=1M count={CHUNK_MB} seek=$((i * {CHUNK_MB})) conv=notrunc || exit 1; "
        f"i=$((i + 1)); sleep {PACE_S}; done; echo filled > /mnt/done) >/dev/null 2>&1 & echo filling"
    )
    assert await asyncio.to_thread(guest_says, vm, fill) == "filling"
    results_before_fill = len(memory_results(recorder))

    def grew_again() -> bool:
        return any(
            r.ok
            and r.memory_before_bytes is not None
            and r.memory_after_bytes is not None
            and r.memory_after_bytes > r.memory_before_bytes
            for r in memory_results(recorder)[results_before_fill:]
        )

    await eventually(grew_again, timeout=90, interval=0.5, what="a memory grow under the workload")

    async def filled() -> bool:
        return await asyncio.to_thread(guest_says, vm, "cat /mnt/done 2>/dev/null || echo no") == "filled"

    await eventually(filled, timeout=90, interval=1, what=f"the workload's fill; OOM lines: {oom_lines(vm)}")
    # its size from the directory (busybox wc -c reads the whole file: 40 s under TCG)
    listing = await asyncio.to_thread(guest_says, vm, "ls -ln /mnt/fill/f")
    assert listing.split()[4] == str(FILL_BYTES), listing  # every chunk was written: the loop stops at a failed dd
    assert oom_lines(vm) == []

    def all_answered() -> bool:
        ids = {r.command_id for r in memory_results(recorder)}
        return all(c.id in ids for c in memory_commands(recorder))

    await eventually(all_answered, timeout=30, interval=0.5, what="a result for every memory command")
    for command in memory_commands(recorder):
        assert len(recorder.results_of(command.id)) == 1, (command, recorder.results_of(command.id))
    # the guest's PSI memory total (its STAT line) reached the samples as a measured share, not "unmeasured"
    assert any(s.memory is not None and s.memory.psi_some is not None for s in recorder.samples if s.vm == VM)
    # and its OOM kills since boot (the STAT line's oom_kill): measured, and none to the end
    kills = [s.memory.oom_kills for s in recorder.samples if s.vm == VM and s.memory is not None]
    assert kills and kills[-1] == 0, kills[-5:]
    stat = vm.guest_stat()
    assert stat is not None and stat.oom_kills == 0
    # The grows kept the guest above what it held: its MemTotal now exceeds the fill.
    total = guest_total_kb(vm)
    assert total is not None and total * 1024 > FILL_BYTES
