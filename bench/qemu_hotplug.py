"""Benchmark: vCPU plug and unplug latencies on a real QEMU guest (TCG), printed as JSON.

    .venv/bin/python bench/qemu_hotplug.py [--cycles 10]

Per cycle: ``device_add`` until QMP returns, and until the guest reports the CPU online; ``device_del``
until QMP returns, and until the slot is free again (QEMU sends no DEVICE_DELETED for a TCG CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from shared.qemu.image import ensure_image
from shared.qemu.vm import QemuVm


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def cycles(vm: QemuVm, count: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"plug_qmp": [], "plug_guest_online": [], "unplug_qmp": [], "unplug_slot_free": []}
    async with vm.qmp() as qmp:
        for i in range(count):
            slots = cast(list[dict[str, Any]], await qmp.execute("query-hotpluggable-cpus"))
            slot = min((s for s in slots if "qom-path" not in s), key=lambda s: s["props"]["core-id"])
            mark = vm.guest_log_size()
            started = time.perf_counter()
            await qmp.execute("device_add", {"driver": slot["type"], "id": f"bench{i}", **slot["props"]})
            out["plug_qmp"].append(time.perf_counter() - started)
            # polling on purpose: the guest's log file and QEMU's slot list send no events to wait on
            while not any(line.startswith("HP onlined") for line in vm.guest_lines_since(mark)):  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            out["plug_guest_online"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await qmp.execute("device_del", {"id": f"bench{i}"})
            out["unplug_qmp"].append(time.perf_counter() - started)
            path = f"/machine/peripheral/bench{i}"
            while any(  # noqa: ASYNC110
                s.get("qom-path") == path
                for s in cast(list[dict[str, Any]], await qmp.execute("query-hotpluggable-cpus"))
            ):
                await asyncio.sleep(0.002)
            out["unplug_slot_free"].append(time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hq-bench-"))
    try:
        started = time.perf_counter()
        vm = QemuVm.start("bench", ensure_image(), max_vcpus=2, vcpus=1, root=root, maxcpus=max(32, args.cycles + 1))
        boot_s = time.perf_counter() - started
        times = asyncio.run(cycles(vm, args.cycles))
        vm.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        json.dumps(
            {
                "bench": "qemu_hotplug",
                "cycles": args.cycles,
                "boot_s": round(boot_s, 2),
                **{k: summary(v) for k, v in times.items()},
                "machine": f"{platform.machine()} {platform.python_version()}",
            }
        )
    )


if __name__ == "__main__":
    main()
