"""What the benchmarks share: percentiles, the machine's description, and a service process started the
benchmarks' way (the processes, scraping and recording themselves are ``hotplug.harness``'s)."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path

from hotplug.harness.processes import ServiceProcess
from shared.broker import free_port


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine() -> dict[str, object]:
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}


def service(args: list[str], log_dir: Path, env: Mapping[str, str] | None = None) -> ServiceProcess:
    """``python -m hotplug <args>`` (``env`` added to this process's environment) with its own metrics port,
    logging at $HOTPLUG_BENCH_LOG_LEVEL (WARNING) and run under $HOTPLUG_BENCH_PROFILE_PREFIX (e.g. "-m cProfile
    -o x.prof"); started, not yet ready: await its ``ready()`` or call its ``wait_ready()``."""
    port = free_port()
    return ServiceProcess(
        [*args, "--log-level", os.environ.get("HOTPLUG_BENCH_LOG_LEVEL", "WARNING")],
        log_dir / f"{args[0]}-{port}.log",
        port,
        env=env,
        prefix=os.environ.get("HOTPLUG_BENCH_PROFILE_PREFIX", "").split(),
    )


async def ready_service(
    args: list[str], log_dir: Path, timeout_s: float = 30.0, env: Mapping[str, str] | None = None
) -> ServiceProcess:
    """``service``, once its metrics endpoint answers (stopped again if it never does)."""
    proc = service(args, log_dir, env)
    try:
        await proc.ready(timeout_s)
    except BaseException:
        await proc.stop_async()
        raise
    return proc
