"""``hotplug bench collector``: the collector's CPU cost per 100 VMs sampled at 1 Hz.

A real collector (``simulator`` source) samples a simulated fleet of N VMs once a second; its process CPU
time is read over a window. The simulator's own cost is not counted: it plays the hypervisor host.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import psutil

from evaluation.bench.common import machine, service
from hotplug.harness.poll import wait_until
from hotplug.harness.scrape import metric
from shared.broker import EmbeddedBroker


def measure(vms: int, seconds: float, work: Path) -> float:
    """CPU % of one core the collector used, for ``vms`` VMs at 1 Hz."""
    with EmbeddedBroker(work / f"nats-{vms}") as broker:
        simulator = service(["simulator", "--nats", broker.url, "--vms", str(vms), "--profiles", "idle"], work)
        collector = service(["collector", "--nats", broker.url, "--interval", "1"], work)
        try:
            simulator.wait_ready(30)
            collector.wait_ready(30)
            if not wait_until(
                lambda: metric(collector.metrics_url, "hotplug_collector_samples_published_total") >= vms, 60
            ):
                raise RuntimeError(f"the collector did not sample {vms} VMs within a minute")
            proc = psutil.Process(collector.proc.pid)
            before, started = proc.cpu_times(), time.monotonic()
            time.sleep(seconds)
            after, elapsed = proc.cpu_times(), time.monotonic() - started
        finally:
            collector.stop()
            simulator.stop()
    used = (after.user + after.system) - (before.user + before.system)
    return 100 * used / elapsed


def bench_collector(sizes: tuple[int, ...] = (10, 100, 1000), seconds: float = 10.0) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="hp-bench-") as tmp:
        by_size = {n: measure(n, seconds, Path(tmp)) for n in sizes}
    per_100 = {str(n): round(pct * 100 / n, 3) for n, pct in by_size.items()}
    return {
        "bench": "collector",
        "interval_s": 1.0,
        "cpu_pct": {str(n): round(p, 3) for n, p in by_size.items()},
        "cpu_pct_per_100_vms_by_vms": per_100,
        "cpu_pct_per_100_vms": per_100[str(max(sizes))],
        **machine(),
    }
