"""``hotplug bench memory``: how fast a real QEMU guest (TCG) gets memory and gives it back, through the ``qemu``
driver.

Two guests, booted for the run one after the other, 1 vCPU and ``BOOT_MIB`` of boot RAM each:

* virtio-mem (a device of ``STEP_MIB``): each trial grows by ``STEP_MIB`` and gives it back. Timed from the
  driver's request to QEMU's ``size`` at the target (what the guest plugged or unplugged) and to the guest's
  MemTotal at the target. The guest watches its MemTotal every 20 ms while the bench runs (``memwatch on``,
  shared/qemu/init.sh) and says each change on its control port, so the guest's figure is good to ~20 ms plus
  the host's 10 ms polling; its STAT line comes only once a second.
* balloon (no virtio-mem): each trial inflates to the driver's floor (half of boot RAM) and deflates back, timed
  to QEMU's ``actual``. The balloon is ``deflate-on-oom``, so the guest's MemTotal does not move.

Nothing is held in the guest while it shrinks: a give-back that must move used pages takes longer (the tests show
it works; the QEMU page has a figure).
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from evaluation.bench.common import machine, percentile
from hotplug.harness.poll import within
from services.actuator.drivers.qemu import QemuDriver
from services.actuator.drivers.qemu_memory import balloon_floor
from shared.qemu.image import ensure_image
from shared.qemu.vm import QemuVm
from shared.units import KIB, MIB

BOOT_MIB = 512
STEP_MIB = 1024
WAIT_S = 120.0  # a give-back on a starved TCG guest: far past the 1–4 s seen, short of a hang
POLL_S = 0.01  # each look is a QMP connection and a read of the guest's log: no finer on 2 cores


class BenchError(RuntimeError):
    pass


def _seconds(values: list[float]) -> dict[str, float]:
    return {
        "p50_s": round(percentile(values, 0.5), 3),
        "p95_s": round(percentile(values, 0.95), 3),
        "max_s": round(max(values), 3),
    }


def _guest_total_kb(vm: QemuVm, mark: int) -> int | None:
    """The last MemTotal the guest's memwatch said after byte ``mark`` of its control log."""
    said = [line for line in vm.guest_lines_since(mark) if line.startswith("MEM total=")]
    return int(said[-1].split("=", 1)[1]) if said else None


async def _timed(name: str, checks: dict[str, Callable[[], object]], started: float) -> dict[str, float]:
    """Seconds from ``started`` until each check first held; ``BenchError`` naming what never did."""
    done: dict[str, float] = {}

    async def poll() -> bool:
        for key, check in checks.items():
            if key not in done:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    done[key] = time.perf_counter() - started
        return len(done) == len(checks)

    if not await within(WAIT_S, poll, POLL_S):
        raise BenchError(f"{name}: {', '.join(k for k in checks if k not in done)} not reached in {WAIT_S:.0f} s")
    return done


async def _virtio_mem(driver: QemuDriver, vm: QemuVm, trials: int) -> dict[str, dict[str, float]]:
    boot, grown = BOOT_MIB * MIB, (BOOT_MIB + STEP_MIB) * MIB
    mark = vm.guest_log_size()
    vm.send("memwatch on")
    if not await within(30, lambda: _guest_total_kb(vm, mark) is not None, 0.05):
        raise BenchError("the guest did not start watching its MemTotal")
    boot_total = _guest_total_kb(vm, mark)
    assert boot_total is not None
    out: dict[str, list[float]] = {k: [] for k in ("grow_qemu", "grow_guest", "give_back_qemu", "give_back_guest")}
    for trial in range(trials):
        for move, target, total in (
            ("grow", grown, boot_total + STEP_MIB * MIB // KIB),
            ("give_back", boot, boot_total),
        ):
            mark = vm.guest_log_size()
            started = time.perf_counter()
            await driver.resize_memory(vm.name, target)

            async def at_target(target: int = target) -> bool:
                return (await driver.read_memory(vm.name)).size_bytes == target

            def guest_at_target(mark: int = mark, total: int = total) -> bool:
                return _guest_total_kb(vm, mark) == total

            done = await _timed(
                f"virtio-mem {move} (trial {trial + 1})", {"qemu": at_target, "guest": guest_at_target}, started
            )
            out[f"{move}_qemu"].append(done["qemu"])
            out[f"{move}_guest"].append(done["guest"])
    vm.send("memwatch off")
    return {
        "grow_to_guest_memtotal": _seconds(out["grow_guest"]),
        "grow_to_qemu_size": _seconds(out["grow_qemu"]),
        "give_back_to_guest_memtotal": _seconds(out["give_back_guest"]),
        "give_back_to_qemu_size": _seconds(out["give_back_qemu"]),
    }


async def _balloon(driver: QemuDriver, vm: QemuVm, trials: int) -> dict[str, dict[str, float]]:
    boot = BOOT_MIB * MIB
    floor = balloon_floor(boot)
    out: dict[str, list[float]] = {"inflate": [], "deflate": []}
    for trial in range(trials):
        for move, target in (("inflate", floor), ("deflate", boot)):
            started = time.perf_counter()
            await driver.resize_memory(vm.name, target)

            async def at_target(target: int = target) -> bool:
                return (await driver.read_memory(vm.name)).size_bytes == target

            done = await _timed(f"balloon {move} (trial {trial + 1})", {"qemu": at_target}, started)
            out[move].append(done["qemu"])
    return {
        f"inflate_{(boot - floor) // MIB}mib_to_qemu_actual": _seconds(out["inflate"]),
        f"deflate_{(boot - floor) // MIB}mib_to_qemu_actual": _seconds(out["deflate"]),
    }


async def _run(trials: int, root: Path) -> dict[str, object]:
    image = await asyncio.to_thread(ensure_image)
    driver = QemuDriver(root)
    report: dict[str, object] = {}
    started = time.perf_counter()
    vm = await asyncio.to_thread(
        QemuVm.start, "bench-vmem", image, max_vcpus=1, memory_mb=BOOT_MIB, max_memory_mb=BOOT_MIB + STEP_MIB, root=root
    )
    report["boot_s"] = round(time.perf_counter() - started, 2)
    try:
        report["virtio_mem"] = await _virtio_mem(driver, vm, trials)
    finally:
        await asyncio.to_thread(vm.stop)
    vm = await asyncio.to_thread(
        QemuVm.start, "bench-balloon", image, max_vcpus=1, memory_mb=BOOT_MIB, balloon=True, root=root
    )
    try:
        report["balloon"] = await _balloon(driver, vm, trials)
    finally:
        await asyncio.to_thread(vm.stop)
    return report


def bench_memory(trials: int) -> dict[str, object]:
    """The report: p50/p95/max seconds per move over ``trials`` trials, and what it ran on."""
    # unix socket paths must stay short
    root = Path(tempfile.mkdtemp(prefix="hq-bm-", dir="/tmp"))
    try:
        report = asyncio.run(_run(trials, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "bench": "memory",
        "guest": "qemu (TCG), 1 vCPU",
        "trials": trials,
        "boot_mib": BOOT_MIB,
        "virtio_mem_step_mib": STEP_MIB,
        **report,
        **machine(),
    }
