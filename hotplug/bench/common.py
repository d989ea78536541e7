"""What the benchmarks share: percentiles, a real broker and service processes, metric scraping."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from shared.broker import free_port


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine() -> dict[str, object]:
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}


def scrape_total(url: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class Service:
    """``python -m hotplug <args>`` as a child process with its own metrics port."""

    def __init__(self, args: list[str], log_dir: Path) -> None:
        self.port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.port}/metrics"
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / f"{args[0]}-{self.port}.log").open("wb") as log:
            prefix = os.environ.get("HOTPLUG_BENCH_PROFILE_PREFIX", "").split()  # e.g. "-m cProfile -o x.prof"
            argv = [
                sys.executable,
                *prefix,
                "-m",
                "hotplug",
                *args,
                "--metrics-port",
                str(self.port),
                "--log-level",
                os.environ.get("HOTPLUG_BENCH_LOG_LEVEL", "WARNING"),
            ]
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                scrape_total(self.metrics_url, "hotplug_service_up")
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{args[0]} exited with {self.proc.returncode}") from None
                time.sleep(0.1)
        raise RuntimeError(f"{args[0]} did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
