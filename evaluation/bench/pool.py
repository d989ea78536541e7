"""``hotplug bench pool``: the promise, measured. The same arrivals of jobs on one shared host, under fixed sizes
(today's IaaS: every VM keeps what it asked for), under each policy, and under ``default`` with priorities.

Two arrival rates: ``busy``, at which fixed sizes commit about 90 % of the host over the span (their queue still
drains), found by bisection on a calibration seed that is not among the measured ones; and ``overload``, four
times that, more than fixed sizes can ever admit and enough to fill a host with hot-plug too. Each run is
``evaluation.bench.pool_run.run_pool``: the simulator's host model, the decider's engine and host planner, and the
actuator's arbitration, in this process at 1-s steps.
Figures pool the jobs of every seed. The targets of issue 23 are checked and printed with the table.

Each setup with a policy also runs the decider's memory rule (``--param memory.KEY=VALUE`` sets it) and every setup
reports memory (``pool_run.POOL_MEMORY_KEYS``, in ``MEMORY_COLUMNS``): memory allocated ÷ what the guests used, swap
time, OOM kills, memory changes per VM-hour, memory given back. The host's memory is not limited unless
``host_memory_bytes`` says so; then jobs also wait for memory and the decider's memory ledger plans the grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evaluation.bench.common import machine
from evaluation.bench.pool_run import FIXED, PoolRun, Setup, run_pool
from services.decider.registry import POLICIES, build_memory_policy, build_policy
from services.simulator.host import Host
from services.simulator.jobs import Job, arrivals_until, poisson_arrivals
from shared.config.rules import VmSettings
from shared.units import format_size

Params = Mapping[str, Mapping[str, object]]
DEFAULT_SEEDS = (101, 102)  # no test uses them
CALIBRATION_SEED = 97
CALIBRATION_STEP_S = 10.0
DEFAULT_CORES = 48
DEFAULT_SPAN_S = 4 * 3600.0
BUSY_COMMITTED = 0.9  # the busy rate: fixed sizes commit this share of the host
# Beyond what fixed sizes can ever admit, and enough that a host with hot-plug fills too: both measured at capacity.
OVERLOAD_FACTOR = 4.0
PRIORITISED = "default+priorities"


def _settings(priority: int = 0, weight: float = 1.0, preemptible: bool = False) -> VmSettings:
    return VmSettings("bench", None, "auto", "default", {}, None, None, priority, weight, preemptible)


PLAIN = _settings()
# A lab's rules of thumb: serving endpoints first, long training next and with a larger share, interactive
# notebooks as they come, and batch runs preemptible at the lowest priority.
PRIORITIES: dict[str, VmSettings] = {
    "inference": _settings(priority=10),
    "training": _settings(priority=0, weight=2.0),
    "notebook": _settings(priority=0),
    "batch": _settings(priority=-10, preemptible=True),
}


def setups(policies: Sequence[str], params: Params | None = None) -> list[Setup]:
    """Fixed sizes, each policy with plain rules, and ``default`` with the priorities above; ``params`` as
    ``--param`` gives them (each policy takes its own scope and ``guard``; every setup with a policy the memory rule
    with ``memory``'s)."""
    params = params or {}
    memory = build_memory_policy(params)
    out = [Setup(FIXED, None, lambda job: PLAIN)]
    for name in policies:
        out.append(Setup(name, _factory(name, params), lambda job: PLAIN, memory))
    out.append(Setup(PRIORITISED, _factory("default", params), lambda job: PRIORITIES.get(job.profile, PLAIN), memory))
    return out


def _factory(name: str, params: Params) -> Callable[[], tuple[Any, Any]]:
    own = {scope: values for scope, values in params.items() if scope in (name, "guard")}
    return lambda: build_policy(name, own)


def jobs_for(rate_per_hour: float, seed: int, span_s: float) -> list[Job]:
    return arrivals_until(poisson_arrivals(rate_per_hour, seed), span_s)


def fixed_committed(rate_per_hour: float, cores: int, span_s: float, seed: int = CALIBRATION_SEED) -> float:
    """The share of the host fixed sizes commit on average over the span's second half (past the fill-up)."""
    host = Host(cores, cores, jobs=jobs_for(rate_per_hour, seed, span_s), max_step_s=CALIBRATION_STEP_S)
    committed_s = 0.0
    t = span_s / 2
    host.advance(t)
    while t < span_s:
        t += CALIBRATION_STEP_S
        host.advance(t)
        committed_s += host.committed_vcpus * CALIBRATION_STEP_S
    return committed_s / (cores * (t - span_s / 2))


def busy_rate(cores: int, span_s: float, target: float = BUSY_COMMITTED) -> float:
    """The arrival rate (jobs per hour) at which fixed sizes commit ``target`` of the host: bisection."""
    low, high = 0.1, 200.0
    for _ in range(14):
        mid = math.sqrt(low * high)
        if fixed_committed(mid, cores, span_s) < target:
            low = mid
        else:
            high = mid
    return round(math.sqrt(low * high), 2)


@dataclass(frozen=True)
class PoolOptions:
    policies: tuple[str, ...] = ("default",)
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    cores: int = DEFAULT_CORES
    span_s: float = DEFAULT_SPAN_S
    rates: tuple[float, ...] | None = None  # jobs per hour; None: busy and overload, calibrated
    params: Params = field(default_factory=dict)  # policy parameters, by scope (``--param``)
    host_memory_bytes: int | None = None  # the host's memory for its VMs (None: not limited)


def pooled(runs: Sequence[PoolRun]) -> PoolRun:
    """The runs of one setup and rate over every seed, as one."""
    out = PoolRun(runs[0].setup, sum(r.span_s for r in runs), runs[0].capacity)
    for r in runs:
        out.jobs += r.jobs
        out.started += r.started
        out.finished += r.finished
        out.waits_s += r.waits_s
        out.slowdowns += r.slowdowns
        out.used_core_s += r.used_core_s
        out.committed_core_s += r.committed_core_s
        out.demand_core_s += r.demand_core_s
        out.unmet_core_s += r.unmet_core_s
        out.vm_s += r.vm_s
        out.changes += r.changes
        out.undone += r.undone
        out.host_full += r.host_full
        out.orders += r.orders
        out.max_over_capacity = max(out.max_over_capacity, r.max_over_capacity)
        out.memory.add_tally(r.memory)
        out.memory_orders += r.memory_orders
        out.memory_refused += r.memory_refused
        out.memory_deferred += r.memory_deferred
    return out


def bench_pool(options: PoolOptions, progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    for name in options.policies:
        if name not in POLICIES:
            raise ValueError(f"unknown policy {name!r}; choose from {', '.join(sorted(POLICIES))}")
    for setup in setups(options.policies, options.params):
        if setup.policy is not None:
            setup.policy()  # a bad --param fails here, before any run
    if options.rates is None:
        busy = busy_rate(options.cores, max(options.span_s, 4 * 3600.0))
        rates = {"busy": busy, "overload": round(busy * OVERLOAD_FACTOR, 2)}
        progress(f"busy rate: {busy} jobs/h (fixed sizes commit ~{BUSY_COMMITTED:.0%} of {options.cores} cores)")
    else:
        rates = {f"rate {r:g}/h": r for r in options.rates}
    table: dict[str, dict[str, dict[str, float]]] = {}
    for label, rate in rates.items():
        table[label] = {}
        for setup in setups(options.policies, options.params):
            runs = []
            for seed in options.seeds:
                jobs = jobs_for(rate, seed, options.span_s)
                runs.append(
                    run_pool(
                        setup,
                        jobs,
                        cores=options.cores,
                        capacity=options.cores,
                        span_s=options.span_s,
                        memory_capacity_bytes=options.host_memory_bytes,
                    )
                )
            table[label][setup.name] = pooled(runs).scores()
            progress(f"{label}: {setup.name} done")
    return {
        "bench": "pool",
        "cores": options.cores,
        "host_memory_bytes": options.host_memory_bytes,
        "span_s": options.span_s,
        "seeds": list(options.seeds),
        "rates_per_hour": rates,
        "params": {scope: dict(values) for scope, values in options.params.items()},
        "results": table,
        "targets": targets(table, list(rates)) if options.rates is None else {},
        **machine(),
    }


def targets(table: dict[str, dict[str, dict[str, float]]], labels: list[str]) -> dict[str, bool]:
    """Issue 23's targets for ``default``: at the busy rate, p95 wait at most a tenth of fixed sizes'; at the
    overload rate, jobs completed and host use at least 1.8× fixed sizes'; at both, unmet demand of running VMs
    ≤ 1 %, slowdown p95 ≤ 1.2 and nothing ever committed above capacity."""
    busy, overload = labels
    out: dict[str, bool] = {}
    b, bf = table[busy]["default"], table[busy][FIXED]
    o, of = table[overload]["default"], table[overload][FIXED]
    out["busy: wait p95 <= fixed/10"] = b["wait_p95_s"] <= bf["wait_p95_s"] / 10
    out["overload: completed >= 1.8x fixed"] = o["completed"] >= 1.8 * of["completed"]
    out["overload: host use >= 1.8x fixed"] = o["host_use_pct"] >= 1.8 * of["host_use_pct"]
    for label in labels:
        d = table[label]["default"]
        out[f"{label}: unmet <= 1 %"] = d["unmet_pct"] <= 1.0
        out[f"{label}: slowdown p95 <= 1.2"] = d["slowdown_p95"] <= 1.2
        out[f"{label}: never above capacity"] = d["max_over_capacity"] <= 0
    return out


COLUMNS = (
    ("wait_p50_s", "wait p50 s", "{:.0f}"),
    ("wait_p95_s", "wait p95 s", "{:.0f}"),
    ("slowdown_p50", "slow p50", "{:.2f}"),
    ("slowdown_p95", "slow p95", "{:.2f}"),
    ("completed", "done", "{:.0f}"),
    ("host_use_pct", "use %", "{:.1f}"),
    ("committed_pct", "commit %", "{:.1f}"),
    ("unmet_pct", "unmet %", "{:.2f}"),
    ("changes_per_vm_hour", "chg/VM-h", "{:.1f}"),
    ("undone_pct", "undone %", "{:.1f}"),
    ("host_full", "host-full", "{:.0f}"),
    ("max_over_capacity", "over cap", "{:.0f}"),
)


# The memory table's, as ``hotplug bench decisions`` names its memory columns.
MEMORY_COLUMNS = (
    ("memory_orders", "orders", "{:.0f}"),
    ("memory_refused", "refused", "{:.0f}"),
    ("memory_deferred", "deferred", "{:.0f}"),
    ("memory_changes_per_vm_hour", "changes/VM-h", "{:.2f}"),
    ("memory_ratio_to_oracle", "×used", "{:.3f}"),
    ("swap_pct", "swap %", "{:.4f}"),
    ("oom_kills", "OOM kills", "{:.0f}"),
    ("memory_given_back_gib", "given back GiB", "{:.1f}"),
    ("memory_alloc_gib_hours", "GiB-h", "{:.0f}"),
)


def _rows(report: dict[str, Any], columns: Sequence[tuple[str, str, str]]) -> list[str]:
    head = "| rate | setup | " + " | ".join(title for _, title, _ in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 2)]
    for label, rows in report["results"].items():
        rate = report["rates_per_hour"][label]
        for setup, scores in rows.items():
            cells = " | ".join(fmt.format(scores[key]) for key, _, fmt in columns)
            named = label if label.startswith("rate ") else f"{label} ({rate:g}/h)"
            lines.append(f"| {named} | {setup} | {cells} |")
    return lines


def render_table(report: dict[str, Any]) -> str:
    """The report as two Markdown tables, one row per rate and setup: vCPUs and jobs, then memory; then the
    targets."""
    lines = _rows(report, COLUMNS)
    memory = report.get("host_memory_bytes")
    lines += ["", f"memory (host memory {'not limited' if memory is None else format_size(memory)}):", ""]
    lines += _rows(report, MEMORY_COLUMNS)
    if report["targets"]:
        lines.append("")
        lines += [f"- {'met' if ok else 'MISSED'}: {name}" for name, ok in report["targets"].items()]
    return "\n".join(lines)
