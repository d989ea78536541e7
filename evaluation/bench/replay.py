"""``hotplug bench replay``: replay throughput in VM-steps per second per policy, on one core."""

from __future__ import annotations

import time
from pathlib import Path

from evaluation.bench.common import machine
from evaluation.replay import score_policy
from evaluation.sweep import scoped
from services.decider.registry import POLICIES, build_policy
from shared.traces import load

DEFAULT_TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces" / "bitbrains_rnd" / "2013-7"


def bench_replay(traces: Path = DEFAULT_TRACES, params: dict[str, dict[str, str]] | None = None) -> dict[str, object]:
    """Each policy's replay throughput; ``params``: ``--param`` entries by scope, each policy run with its own."""
    series = load([traces], "bitbrains")
    steps = sum(len(s.demand) for s in series)
    rates, cpu_rates = {}, {}
    for name in POLICIES:
        policy, rails = build_policy(name, scoped(params or {}, name))
        started, cpu_started = time.perf_counter(), time.process_time()
        score_policy(series, policy, rails, pressure=False)
        rates[name] = round(steps / (time.perf_counter() - started))
        # Per second of this process's CPU: comparable across runs on a machine others load too.
        cpu_rates[name] = round(steps / (time.process_time() - cpu_started))
    return {
        "bench": "replay",
        "trace": str(traces),
        "vm_steps": steps,
        "vm_steps_per_s": rates,
        "vm_steps_per_cpu_s": cpu_rates,
        "params": params or {},
        **machine(),
    }
