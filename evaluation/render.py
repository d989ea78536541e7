"""The study's output for people: replay and frontier tables (rich) and plots (matplotlib, optional).

Formatting only; the figures come from ``evaluation.sweep``.
"""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.replay import replay_series
from evaluation.sweep import declared_sweep, scoped
from evaluation.tally import ORACLE, SCORE_KEYS
from services.decider.registry import build_policy
from shared.errors import MissingDependency
from shared.traces import VmSeries


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
            key = declared_sweep(name)[0]
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
