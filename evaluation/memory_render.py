"""The memory study's output for people: Markdown tables of ``evaluation.memory_replay``'s reports.

Formatting only. Markdown, so that a table printed by ``hotplug replay --resource memory`` goes into the docs as
it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_HALF_TITLES = {"a": 'half "a" (tuning)', "b": 'half "b" (check)', "all": "all VMs"}
_SCORE_HEAD = "| ×oracle | ×provisioned | short % | short samples | >10 % short | VMs short | changes/VM-h |"


def _cells(scores: Mapping[str, float]) -> str:
    return (
        f"| {scores['ratio_to_oracle']:.3f} | {scores['ratio_to_provisioned']:.3f} | {scores['shortfall_pct']:.3f} "
        f"| {scores['shortfall_events']:.0f} | {scores['deep_shortfall_events']:.0f} | {scores['vms_short']:.0f} "
        f"| {scores['changes_per_vm_hour']:.3f} |"
    )


def _value(knob: str, value: float) -> str:
    return f"{value:g}"


def render_memory_table(report: Mapping[str, Any]) -> str:
    """Each rule at its defaults, per half and over all VMs."""
    lines = []
    for name, rules in report["halves"].items():
        lines += [f"**{_HALF_TITLES[name]}, {report['vms'][name]} VMs**", "", f"| rule {_SCORE_HEAD}"]
        lines.append("|---" + "|---:" * 7 + "|")
        lines += [f"| {rule} {_cells(scores)}" for rule, scores in rules.items()]
        lines.append("")
    return "\n".join(lines)


def render_memory_frontier(report: Mapping[str, Any]) -> str:
    """Per half: × oracle at each level of shortfall for each sweep, then every point of every sweep."""
    levels: Sequence[float] = report["levels_pct"]
    lines = []
    for name, entry in report["halves"].items():
        title = f"{_HALF_TITLES[name]}, {entry['vms']} VMs"
        lines += [f"**{title}: ×oracle at each level of shortfall (% of VM-samples)**", ""]
        lines.append("| rule (swept knob) | lowest short % | " + " | ".join(f"at {lv:g} %" for lv in levels) + " |")
        lines.append("|---|---:|" + "---:|" * len(levels))
        static = entry["static"]
        lines.append(
            f"| static (provisioned) | {static['shortfall_pct']:.3f} | "
            + " | ".join(f"{static['ratio_to_oracle']:.3f}" if static["shortfall_pct"] <= lv else "–" for lv in levels)
            + " |"
        )
        for sweep in entry["sweeps"]:
            lowest = min(p["shortfall_pct"] for p in sweep["sweep"])
            costs = ["–" if (c := sweep["cost_at"][f"{lv:g}"]) is None else f"{c:.3f}" for lv in levels]
            lines.append(f"| {sweep['rule']} (`{sweep['knob']}`) | {lowest:.3f} | " + " | ".join(costs) + " |")
        lines += ["", f"**{title}: every point of every sweep**", "", f"| rule | knob | value {_SCORE_HEAD}"]
        lines.append("|---|---|---:" + "|---:" * 7 + "|")
        for sweep in entry["sweeps"]:
            for point in sweep["sweep"]:
                value = _value(sweep["knob"], point["value"])
                lines.append(f"| {sweep['rule']} | `{sweep['knob']}` | {value} {_cells(point)}")
        lines.append("")
    return "\n".join(lines)
