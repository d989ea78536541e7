"""``hotplug replay``: score policies on recorded traces, side by side with the oracle.

Policies run in parallel worker processes (one policy's whole replay per task); the arithmetic is
``services.decider.replay``. ``--plot DIR`` also sweeps each policy's main parameter.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from services.decider.frontier import frontier
from services.decider.registry import POLICIES, build_policy
from services.decider.replay import ORACLE, SCORE_KEYS, replay_series, score_oracle, score_policy
from services.decider.traces import VmSeries
from shared.errors import MissingDependency, UsageError

# The parameter that moves each policy along its cost/unmet trade-off, and the values a sweep tries: wide
# enough that each policy's curve runs from generous to stingy (the frontier reads cost at levels of unmet).
SWEEPS: dict[str, tuple[str, tuple[float, ...]]] = {
    "threshold": ("upper", (0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)),
    "hpa": ("target", (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)),
    "vpa": ("target_percentile", (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)),
    "fusd": ("warm", (0.3, 0.4, 0.5, 0.65, 0.8, 0.9, 0.95, 1.0)),
    "captain": ("target_starvation", (0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.2, 0.3)),
    "default": ("target_unmet_pct", (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)),
}


@dataclass(frozen=True)
class Job:
    label: str
    policy: str
    params: dict[str, dict[str, str]]
    pressure: bool


def policy_names(spec: str) -> list[str]:
    names = list(POLICIES) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        if name not in POLICIES:
            raise UsageError(f"unknown policy {name!r}; choose from all, {', '.join(sorted(POLICIES))}")
    return names


def scoped(params: dict[str, dict[str, str]], policy: str) -> dict[str, dict[str, str]]:
    """The ``--param`` entries that apply to ``policy`` (its own scope and ``guard``)."""
    return {k: v for k, v in params.items() if k in (policy, "guard")}


_SERIES: list[VmSeries] = []


def _init_worker(series: list[VmSeries]) -> None:
    _SERIES[:] = series


def _run_job(job: Job) -> tuple[str, dict[str, float]]:
    policy, rails = build_policy(job.policy, job.params)
    return job.label, score_policy(_SERIES, policy, rails, job.pressure)


def run_jobs(series: list[VmSeries], jobs: list[Job], workers: int | None = None) -> dict[str, dict[str, float]]:
    for job in jobs:  # refuse bad parameters before forking anything
        build_policy(job.policy, job.params)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        _init_worker(series)
        return dict(map(_run_job, jobs))
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(series,)) as pool:
        return dict(pool.map(_run_job, jobs))


def replay_table(
    series: list[VmSeries], names: list[str], params: dict[str, dict[str, str]], pressure: bool
) -> dict[str, object]:
    jobs = [Job(name, name, scoped(params, name), pressure) for name in names]
    scores = run_jobs(series, jobs)
    scores[ORACLE] = score_oracle(series)
    return {
        "vms": len(series),
        "steps": sum(len(s.demand) for s in series),
        "policies": {name: scores[name] for name in [*names, ORACLE]},
    }


def sweep(
    series: list[VmSeries],
    names: list[str],
    params: dict[str, dict[str, str]],
    pressure: bool,
    workers: int | None = None,
) -> dict[str, list[tuple[float, dict[str, float]]]]:
    """Each policy along its trade-off knob (``SWEEPS``), in ``workers`` processes (None: one per CPU)."""
    jobs = []
    for name in names:
        key, values = SWEEPS[name]
        for value in values:
            p = scoped(params, name)
            p = {**p, name: {**p.get(name, {}), key: repr(value)}}
            jobs.append(Job(f"{name}:{value!r}", name, p, pressure))
    scores = run_jobs(series, jobs, workers)
    out: dict[str, list[tuple[float, dict[str, float]]]] = {}
    for job in jobs:
        out.setdefault(job.policy, []).append((float(job.label.split(":", 1)[1]), scores[job.label]))
    return out


def frontier_report(
    series: list[VmSeries],
    names: list[str],
    params: dict[str, dict[str, str]],
    pressure: bool,
    levels: list[float],
    workers: int | None = None,
) -> dict[str, object]:
    """Each policy's sweep, and from it the cost (× oracle) it reaches at each level of unmet demand."""
    sweeps = sweep(series, names, params, pressure, workers)
    policies: dict[str, object] = {}
    for name, points in sweeps.items():
        pairs = [(scores["unmet_pct"], scores["ratio_to_oracle"]) for _, scores in points]
        policies[name] = {
            "parameter": f"{name}.{SWEEPS[name][0]}",
            **frontier(pairs, levels),
            "sweep": [
                {
                    "value": value,
                    "unmet_pct": scores["unmet_pct"],
                    "ratio_to_oracle": scores["ratio_to_oracle"],
                    "actions_per_vm_day": scores["actions_per_vm_day"],
                }
                for value, scores in points
            ],
        }
    return {
        "vms": len(series),
        "steps": sum(len(s.demand) for s in series),
        "pressure": pressure,
        "levels_pct": levels,
        "policies": policies,
    }


def render_frontier(report: dict[str, object], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("policy", "lowest unmet %"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    levels = report["levels_pct"]
    policies = report["policies"]
    assert isinstance(levels, list)
    assert isinstance(policies, dict)
    for level in levels:
        table.add_column(f"×oracle at {level:g} %", justify="right")
    for name, entry in policies.items():
        costs = entry["cost_at"]
        cells = [("-" if costs[f"{lv:g}"] is None else f"{costs[f'{lv:g}']:.3f}") for lv in levels]
        table.add_row(name, f"{entry['lowest_unmet_pct']:.2f}", *cells)
    Console().print(table)


def render_table(report: dict[str, object], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("policy")
    headers = {
        "alloc_core_hours": "alloc core-h",
        "oracle_core_hours": "oracle core-h",
        "ratio_to_oracle": "×oracle",
        "slack_pct": "slack %",
        "unmet_pct": "unmet %",
        "underprovisioned_pct": "under %",
        "actions_per_vm_day": "actions/VM-day",
    }
    for key in SCORE_KEYS:
        table.add_column(headers[key], justify="right")
    policies = report["policies"]
    assert isinstance(policies, dict)
    for name, scores in policies.items():
        cells = [
            f"{scores[k]:.0f}"
            if k.endswith("hours")
            else f"{scores[k]:.3f}"
            if k == "ratio_to_oracle"
            else f"{scores[k]:.2f}"
            for k in SCORE_KEYS
        ]
        table.add_row(name, *cells)
    Console().print(table)


def write_plots(
    out_dir: Path,
    series: list[VmSeries],
    names: list[str],
    params: dict[str, dict[str, str]],
    pressure: bool,
    sweeps: dict[str, list[tuple[float, dict[str, float]]]],
    report: dict[str, object],
) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependency("--plot needs matplotlib: pip install 'hotplug-heaven[plot]'") from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    # Allocation against demand for a few VMs: the busiest ones, where policies differ most.
    chosen = sorted(series, key=lambda s: -sum(s.demand) / max(1, len(s.demand)))[:3]
    fig, axes = plt.subplots(len(chosen), 1, figsize=(11, 3.2 * len(chosen)), squeeze=False)
    for ax, s in zip(axes[:, 0], chosen, strict=True):
        hours = [i * s.step_s / 3600 for i in range(len(s.demand))]
        ax.plot(hours, [min(d, s.max_vcpus) for d in s.demand], color="black", lw=0.8, label="demand")
        for name in names:
            policy, rails = build_policy(name, scoped(params, name))
            ax.step(hours, replay_series(s, policy, rails, pressure), where="post", lw=0.9, label=name)
        ax.set_title(f"{s.name} (max {s.max_vcpus} vCPUs)")
        ax.set_xlabel("hours")
        ax.set_ylabel("vCPUs")
    axes[0, 0].legend(loc="upper right", fontsize=8, ncol=4)
    fig.tight_layout()
    path = out_dir / "allocation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    policies = report["policies"]
    assert isinstance(policies, dict)
    oracle = policies[ORACLE]["alloc_core_hours"]
    fig, (full, zoom) = plt.subplots(1, 2, figsize=(15, 6))
    for ax in (full, zoom):
        for name, points in sweeps.items():
            key = SWEEPS[name][0]
            (line,) = ax.plot(
                [p[1]["alloc_core_hours"] for p in points],
                [p[1]["unmet_pct"] for p in points],
                marker="o",
                ms=4,
                lw=1,
                label=f"{name} ({key})",
            )
            for value, scores in points:
                ax.annotate(
                    f"{value:g}", (scores["alloc_core_hours"], scores["unmet_pct"]), fontsize=6, color=line.get_color()
                )
        for name in names:
            scores = policies[name]
            ax.plot(scores["alloc_core_hours"], scores["unmet_pct"], marker="*", ms=13, color="black", ls="none")
            ax.annotate(
                name,
                (scores["alloc_core_hours"], scores["unmet_pct"]),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
        ax.axvline(oracle, color="grey", ls="--", lw=0.8, label="oracle core-hours")
        ax.set_xlabel("allocated core-hours (cost)")
        ax.set_ylabel("unmet demand % (harm)")
    # The zoom: where the policies compete, near the oracle's cost.
    near = [policies[n]["unmet_pct"] for n in names if policies[n]["alloc_core_hours"] <= 1.15 * oracle]
    zoom.set_xlim(0.97 * oracle, 1.15 * oracle)
    zoom.set_ylim(0, 2 * max(near, default=5.0))
    full.set_title("cost against unmet demand (stars: default parameters)")
    zoom.set_title("near the oracle's cost")
    full.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    (out_dir / "sweep.json").write_text(
        json.dumps({name: [{"value": v, **s} for v, s in points] for name, points in sweeps.items()}, indent=1)
    )
    written.append(out_dir / "sweep.json")
    return written
