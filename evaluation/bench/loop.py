"""``hotplug bench loop``: end-to-end reaction, from a load step to the vCPU plugged, stage by stage.

Real processes (collector at 1 s, watching the source for pressure between its rounds where it can; decider with
the seed's threshold rule and no waits; actuator) on an embedded nats-server, and VMs of one of two kinds
(``--guest``):

* ``simulator`` (default): the simulated cloud's VMs, whose hot-plug delay is 50 ms, so the figure is the
  loop's own. Each trial pins an idle VM's demand above its maximum.
* ``qemu``: real QEMU guests (TCG), booted for the run with 1 vCPU of 2 (``libvirt``: the same guest as a libvirt
  domain, through the ``libvirt`` source and driver). Each trial starts two busy loops inside
  the guest (its control channel's ``busy 2``), which the guest reports at once as CPU pressure (its ``PSI`` line:
  an urgent sample), and the plug counts once the guest has brought the vCPU online
  (the QEMU driver waits for it). A guest allows ``maxcpus`` − 1 hot-adds in its life, so trials per guest are
  capped (``MAX_QEMU_TRIALS``). A guest's first plug in its life is timed apart (``first_plugs_s``): its kernel
  then switches from UP to SMP code once, which no later plug pays.

Trials start at a random moment of the sampling second; the load is then released and the VM shrinks back
before the next. The decisions themselves are measured by ``hotplug bench decisions``; the stages are
``evaluation.bench.stages``'.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import msgspec

from evaluation.bench import LOOP_GUESTS
from evaluation.bench.common import machine, ready_service
from evaluation.bench.stages import Trial, stage_table, stages_of
from hotplug.harness.poll import within
from hotplug.harness.processes import ServiceProcess, policy_args
from hotplug.harness.recorder import Recorder
from shared import bus, subjects
from shared.broker import EmbeddedBroker
from shared.messages import ScaleCommand, ScaleResult
from shared.qemu.image import ensure_image
from shared.qemu.vm import DIR_ENV, LIFETIME_MAXCPUS, QemuVm

HOTPLUG_DELAY_S = 0.05  # the simulated VMs' time per vCPU plugged
INTERVAL_S = 1.0
PLUG_TIMEOUT_S = 60.0  # a TCG guest on a busy machine can take long to show its load and online a vCPU
MAX_QEMU_TRIALS = LIFETIME_MAXCPUS - 2  # one hot-add per trial and its first plug, within a guest's life's budget
QEMU_BUSY_LOOPS = 2  # more runnable tasks than the guest's 1 vCPU: use and pressure both show the step

# The reaction is the loop's (sample, decision, command, hot-plug, result), not a policy's patience: the seed's
# rule with no wait and low thresholds grows on the first sample that shows the load (even the part of a second
# after the step) and shrinks as soon as it is gone, so trials follow each other quickly (the calm default would
# hold each VM for minutes).
EAGER_THRESHOLD = {
    "threshold.sustain_s": 0,
    "threshold.upper": 0.1,
    "threshold.lower": 0.05,
    "guard.up_cooldown_s": 0,
    "guard.down_cooldown_s": 0,
    "guard.warmup_s": 0,
    "guard.max_changes": 1000,
}

Load = Callable[[str, bool], Awaitable[None]]  # (vm, on) → the step applied


class _Plugs(Recorder):
    """Every command and result, and the wall time each awaited plug's result arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.awaited: dict[str, asyncio.Future[tuple[ScaleResult, float]]] = {}

    def on_result(self, result: ScaleResult) -> None:
        super().on_result(result)
        grown = result.ok and (result.vcpus_after or 0) > (result.vcpus_before or 0)
        waiting = self.awaited.get(result.vm)
        if grown and waiting is not None and not waiting.done():
            waiting.set_result((result, time.time()))

    def command_of(self, result: ScaleResult) -> ScaleCommand:
        return next(c for c in self.commands if c.id == result.command_id)


async def loop_services(
    broker_url: str,
    guest: str,
    vms: int,
    work: Path,
    env: Mapping[str, str],
    interval_s: float = INTERVAL_S,
    source_args: Sequence[str] = (),
) -> list[ServiceProcess]:
    """The loop's services (the simulator's too for ``simulator``), each ready; the collector samples every
    ``interval_s`` and watches the source for pressure between its rounds (where it can: the QEMU guests' PSI lines)."""
    common = ["--nats", broker_url]
    started: list[ServiceProcess] = []
    specs: list[list[str]] = []
    if guest == "simulator":
        delay = str(HOTPLUG_DELAY_S)
        specs.append(["simulator", *common, "--vms", str(vms), "--profiles", "idle", "--max-vcpus", "2"])
        specs[-1] += ["--hotplug-delay", delay]
    specs.append(["collector", *common, "--source", guest, "--interval", str(interval_s), *source_args])
    specs.append(["decider", *common, *policy_args("threshold", EAGER_THRESHOLD)])
    specs.append(["actuator", *common, "--driver", guest, "--max-changes", "1000"])  # trials follow quickly
    try:
        for argv in specs:
            started.append(await ready_service(argv, work, env=env))
    except BaseException:
        for service in started:
            await service.stop_async()
        raise
    return started


async def _trials(
    broker_url: str, names: list[str], trials: int, load: Load, first_apart: bool = False
) -> tuple[list[Trial], list[Trial]]:
    """``trials`` load steps spread over the VMs, and (``first_apart``) each VM's first step before them, timed
    apart: the timed trials, and those first ones."""
    nc = await bus.connect(broker_url, "bench", forever=False)
    plugs = _Plugs()
    await plugs.attach(nc)
    done: list[Trial] = []
    firsts: list[Trial] = []
    rng = random.Random(7)

    def at_floor(vm: str, since: float) -> bool:
        """The VM's latest sample, taken after ``since`` (shared clock), shows it at 1 vCPU and no command was made
        since: ready for the next step. (Not any sample at 1 vCPU: a VM can grow again after one, on a late
        pressure report such as its unplug's own stall, and a step on 2 vCPUs would wait for a plug in vain.)"""
        latest = next((s for s in reversed(plugs.samples) if s.vm == vm), None)
        if latest is None or latest.time <= since or latest.online_vcpus != 1:
            return False
        return not any(c.vm == vm and c.time >= latest.time for c in plugs.commands[-20:])

    async def trials_of(vm: str, count: int) -> None:
        since = 0.0
        for n in range(count + first_apart):
            while True:
                if not await within(PLUG_TIMEOUT_S, lambda since=since: at_floor(vm, since)):
                    raise TimeoutError(f"{vm} did not shrink back to 1 vCPU within {PLUG_TIMEOUT_S:g} s")
                await asyncio.sleep(rng.uniform(0, INTERVAL_S))  # a random moment of the sampling second
                if at_floor(vm, since):  # still: no grow came meanwhile
                    break
            plugs.awaited[vm] = asyncio.get_running_loop().create_future()
            step = time.time()
            await load(vm, True)
            result, arrived = await asyncio.wait_for(plugs.awaited[vm], PLUG_TIMEOUT_S)
            (firsts if first_apart and n == 0 else done).append(Trial(step, plugs.command_of(result), result, arrived))
            del plugs.awaited[vm]
            await load(vm, False)
            since = result.time

    try:
        per_vm = -(-trials // len(names))
        await asyncio.gather(*(trials_of(vm, per_vm) for vm in names))
    finally:
        await nc.close()
    return done, firsts


async def run(guest: str, vms: int, trials: int, work: Path) -> dict[str, object]:
    if guest not in LOOP_GUESTS:
        raise ValueError(f"unknown guest {guest!r}; choose from {', '.join(LOOP_GUESTS)}")
    # libvirt's domains are the host's: the bench's own carry its name
    names = [f"{'loop-' if guest == 'libvirt' else ''}vm-{i + 1:02d}" for i in range(vms)]
    with EmbeddedBroker(work / "nats") as broker:
        if guest == "qemu":
            if -(-trials // vms) > MAX_QEMU_TRIALS:
                raise ValueError(f"at most {MAX_QEMU_TRIALS} trials per QEMU guest (its hot-add budget)")
            done, firsts = await _on_qemu(broker.url, names, trials, work)
            delay: float | None = None
        elif guest == "libvirt":
            if -(-trials // vms) > MAX_QEMU_TRIALS:
                raise ValueError(f"at most {MAX_QEMU_TRIALS} trials per libvirt guest (its hot-add budget)")
            done, firsts = await _on_libvirt(broker.url, names, trials, work)
            delay = None
        else:
            done, firsts = await _on_simulator(broker.url, names, trials, work), []
            delay = HOTPLUG_DELAY_S
    totals = sorted(round(t.arrived - t.step, 3) for t in done)
    return {
        "bench": "loop",
        "guest": guest,
        "vms": vms,
        "trials": len(done),
        "interval_s": INTERVAL_S,
        "hotplug_delay_s": delay,
        "reaction_p50_s": stage_table(done)["total"]["p50_s"],
        "reaction_p95_s": stage_table(done)["total"]["p95_s"],
        "reaction_max_s": totals[-1] if totals else None,
        "stages": stage_table(done),
        # Each trial's stages in the order they ran, so that a slow tail can be told apart from a slow first plug.
        "trials_s": [_rounded(stages_of(t)) for t in done],
        # A real guest's first plug in its life, timed apart (QEMU: the guest kernel's one-way switch from UP to SMP
        # code, 0.3-0.6 s; docs/performance.md). Every later plug of that guest is a timed trial.
        "first_plugs_s": [_rounded(stages_of(t)) for t in firsts],
        **machine(),
    }


def _rounded(stages: Mapping[str, float]) -> dict[str, float]:
    return {stage: round(seconds, 3) for stage, seconds in stages.items()}


async def _on_simulator(broker_url: str, names: list[str], trials: int, work: Path) -> list[Trial]:
    from shared.sim_api import LoadRequest

    services = await loop_services(broker_url, "simulator", len(names), work, {})
    try:
        nc = await bus.connect(broker_url, "bench-load", forever=False)
        subject = subjects.simulator("local", "load")

        async def load(vm: str, on: bool) -> None:
            request = LoadRequest(vm=vm, demand_cores=64.0 if on else None)
            await nc.request(subject, msgspec.json.encode(request), timeout=5)

        try:
            done, _ = await _trials(broker_url, names, trials, load)
        finally:
            await nc.close()
        return done
    finally:
        for service in services:
            await service.stop_async()


async def _on_booted(
    broker_url: str,
    kind: str,
    names: list[str],
    trials: int,
    work: Path,
    env: Mapping[str, str],
    send: Mapping[str, Callable[[str], None]],
    source_args: Sequence[str] = (),
) -> tuple[list[Trial], list[Trial]]:
    """Trials on real guests of ``kind`` booted already: the loop's services, and each load step sent to the guest's
    control channel (``send``: VM → its channel's send) as busy loops."""
    services = await loop_services(broker_url, kind, len(names), work, env, source_args=source_args)
    try:

        async def load(vm: str, on: bool) -> None:
            await asyncio.to_thread(send[vm], f"busy {QEMU_BUSY_LOOPS if on else 0}")

        return await _trials(broker_url, names, trials, load, first_apart=True)
    finally:
        for service in services:
            await service.stop_async()


async def _on_libvirt(broker_url: str, names: list[str], trials: int, work: Path) -> tuple[list[Trial], list[Trial]]:
    """The same on libvirt domains running the test guest (as ``hotplug libvirt start`` starts them), through the
    ``libvirt`` source, which follows their PSI lines, and driver; the daemons must run (.ci/libvirt-daemons)."""
    from hotplug.hypervisors.libvirt import DIR_ENV as LIBVIRT_DIR_ENV
    from hotplug.hypervisors.libvirt import start, stop
    from shared.libvirt.connection import Connection
    from shared.libvirt.guest import GuestChannel, guest_dir

    root = work / "libvirt"
    conn = Connection()
    started: list[str] = []

    def quietly(admin: Callable[..., int], *args: object) -> int:
        with contextlib.redirect_stdout(sys.stderr):  # the admin commands' lines; stdout is the report's
            return admin(*args)

    try:
        for name in names:  # one at a time: each boot is CPU-bound under TCG
            await asyncio.to_thread(quietly, start, conn, name, 2, 1, 256, root)
            started.append(name)
        channels = {
            name: GuestChannel(guest_dir(name, root) / "ctl.log", guest_dir(name, root) / "ctl.sock") for name in names
        }
        # Only the bench's own domains are sampled, so only they are decided on and resized.
        only = [arg for name in names for arg in ("--libvirt-domain", name)]
        env = {LIBVIRT_DIR_ENV: str(root)}
        send = {name: channel.send for name, channel in channels.items()}
        return await _on_booted(broker_url, "libvirt", names, trials, work, env, send, only)
    finally:
        for name in started:
            await asyncio.to_thread(quietly, stop, conn, name, root)
        conn.close()


async def _on_qemu(broker_url: str, names: list[str], trials: int, work: Path) -> tuple[list[Trial], list[Trial]]:
    root = work / "qemu"
    image = await asyncio.to_thread(ensure_image)
    guests: list[QemuVm] = []
    try:
        for name in names:  # one at a time: each boot is CPU-bound under TCG
            guests.append(await asyncio.to_thread(QemuVm.start, name, image, max_vcpus=2, vcpus=1, root=root))
        send = {guest.name: guest.send for guest in guests}
        return await _on_booted(broker_url, "qemu", names, trials, work, {DIR_ENV: str(root)}, send)
    finally:
        for guest in guests:
            await asyncio.to_thread(guest.stop)


def bench_loop(vms: int | None = None, trials: int = 20, guest: str = "simulator") -> dict[str, object]:
    """``vms`` (None: 4 simulated VMs, or 1 real guest, whose boot and TCG load are the machine's)."""
    with tempfile.TemporaryDirectory(prefix="hp-bench-") as tmp:
        return asyncio.run(run(guest, vms or (4 if guest == "simulator" else 1), trials, Path(tmp)))
