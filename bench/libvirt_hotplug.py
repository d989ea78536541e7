"""Benchmark: vCPU plug and unplug latencies through libvirt on a real TCG guest, printed as JSON.

    .venv/bin/python bench/libvirt_hotplug.py [--cycles 6] [--uri qemu:///system]

Needs a running libvirtd (``.ci/libvirt-daemons start`` as root). Per cycle, on a transient test domain:

* raw ``setVcpu`` plug: until the call returns (``plug_call``), and until the guest reports the CPU online
  (``plug_guest_online``, its "HP onlined" line);
* raw ``setVcpu`` unplug: until the call returns (``unplug_call``: under TCG always error 68 after libvirt's fixed
  5 s wait), until the vCPU's QEMU thread is gone (``unplug_thread_gone``: the guest released it), and the resync
  call that makes libvirt see it (``unplug_resync_call``);
* the driver's verified steps, as the actuator takes them (``driver_plug``, ``driver_unplug``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hotplug.hypervisors import libvirt as libvirt_cmd
from services.actuator.drivers.libvirt import LibvirtDriver, qemu_pid
from shared.libvirt.connection import Connection
from shared.libvirt.domain import parse_domain
from shared.libvirt.guest import GuestChannel, guest_dir
from shared.qemu.vm import vcpu_threads


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def cycles(conn: Connection, name: str, channel: GuestChannel, count: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {
        k: []
        for k in (
            "plug_call",
            "plug_guest_online",
            "unplug_call",
            "unplug_thread_gone",
            "unplug_resync_call",
            "driver_plug",
            "driver_unplug",
        )
    }
    libvirt = conn.libvirt
    live = libvirt.VIR_DOMAIN_AFFECT_LIVE
    dom = conn.run(lambda c: c.lookupByName(name))
    pid = qemu_pid(parse_domain(dom.XMLDesc(0)).uuid)
    assert pid is not None, "cannot find the QEMU process of the bench domain"
    driver = LibvirtDriver(connection=conn)
    for _ in range(count):
        mark = channel.size()
        started = time.perf_counter()
        await asyncio.to_thread(dom.setVcpu, "1", 1, live)
        out["plug_call"].append(time.perf_counter() - started)
        # polling on purpose: the guest's log file and QEMU's thread list send no events to wait on
        while not any(line.startswith("HP onlined") for line in channel.lines_since(mark)):  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        out["plug_guest_online"].append(time.perf_counter() - started)

        started = time.perf_counter()
        call = asyncio.ensure_future(asyncio.to_thread(dom.setVcpu, "1", 0, live))
        while 1 in (vcpu_threads(pid) or set()):  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        out["unplug_thread_gone"].append(time.perf_counter() - started)
        try:
            await call
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_TIMEOUT:
                raise
        out["unplug_call"].append(time.perf_counter() - started)
        started = time.perf_counter()
        try:
            await asyncio.to_thread(dom.setVcpu, "1", 0, live)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:  # already in requested state: synced anyway
                raise
        out["unplug_resync_call"].append(time.perf_counter() - started)

        started = time.perf_counter()
        await driver.plug(name)
        out["driver_plug"].append(time.perf_counter() - started)
        started = time.perf_counter()
        await driver.unplug(name)
        out["driver_unplug"].append(time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--uri", default=None)
    args = parser.parse_args()
    if not 1 <= args.cycles <= 15:
        parser.error("--cycles takes 1 to 15 (two hot-adds a cycle within the guest's TCG budget of 31)")
    root = Path(tempfile.mkdtemp(prefix="hl-bench-"))
    name = f"hl-bench-{os.getpid()}"
    conn = Connection(args.uri)
    result: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the JSON alone
            libvirt_cmd.start(conn, name, 2, 1, 256, root)
        boot_s = time.perf_counter() - started
        directory = guest_dir(name, root)
        times = asyncio.run(cycles(conn, name, GuestChannel(directory / "ctl.log"), args.cycles))
        result = {
            "bench": "libvirt_hotplug",
            "cycles": args.cycles,
            "boot_s": round(boot_s, 2),
            **{k: summary(v) for k, v in times.items()},
            "libvirt": conn.run(lambda c: c.getLibVersion()),
            "qemu": conn.run(lambda c: c.getVersion()),
            "machine": f"{platform.machine()} {platform.python_version()} {os.cpu_count()} cores",
        }
    finally:
        try:
            with contextlib.redirect_stdout(sys.stderr):
                libvirt_cmd.stop(conn, name, root)
        finally:
            conn.close()
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
