"""``hotplug report``: study a run without Grafana. One self-contained HTML file from the event log and the
metric samples: per-VM allocation against use with every action marked, and the run's totals scored with
the same metrics as ``hotplug replay`` (via ``evaluation.shadow``).

The figures and totals are also embedded as JSON (``<script id="run-data">``) for tools and tests.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from evaluation.shadow import ACTIVE, score_shadows
from shared.messages import MetricSample, ScaleCommand, ScaleResult


@dataclass
class VmRun:
    host: str
    vm: str
    samples: list[MetricSample] = field(default_factory=list)
    results: list[ScaleResult] = field(default_factory=list)


@dataclass
class RunData:
    vms: dict[tuple[str, str], VmRun]
    commands: list[ScaleCommand]
    results: list[ScaleResult]
    scores: dict[str, float]

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.results if r.ok]
        return {
            "vms": len(self.vms),
            "samples": sum(len(v.samples) for v in self.vms.values()),
            "commands": len(self.commands),
            "results": len(self.results),
            "results_ok": len(ok),
            "results_failed": len(self.results) - len(ok),
            "vcpus_plugged": sum(max(0, (r.vcpus_after or 0) - (r.vcpus_before or 0)) for r in ok),
            "vcpus_unplugged": sum(max(0, (r.vcpus_before or 0) - (r.vcpus_after or 0)) for r in ok),
            "scores": self.scores,
            "per_vm": {
                f"{h}/{v}": {
                    "samples": len(run.samples),
                    "results": len(run.results),
                    "actions": sum(1 for r in run.results if r.ok and r.vcpus_before != r.vcpus_after),
                }
                for (h, v), run in sorted(self.vms.items())
            },
        }


def assemble(samples: list[MetricSample], commands: list[ScaleCommand], results: list[ScaleResult]) -> RunData:
    """Pure: group the run's messages per VM and score the allocation it had."""
    vms: dict[tuple[str, str], VmRun] = {}
    for s in samples:
        vms.setdefault((s.host, s.vm), VmRun(s.host, s.vm)).samples.append(s)
    for r in results:
        vms.setdefault((r.host, r.vm), VmRun(r.host, r.vm)).results.append(r)
    for run in vms.values():
        run.samples.sort(key=lambda s: s.time)
        run.results.sort(key=lambda r: r.time)
    scores = score_shadows(samples, [])[ACTIVE] if samples else {}
    return RunData(vms, commands, results, scores)


def _figure(run: VmRun) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 2.8))
    if run.samples:
        t0 = run.samples[0].time
        ts = [(s.time - t0) / 60 for s in run.samples]
        ax.step(ts, [s.online_vcpus for s in run.samples], where="post", label="allocated vCPUs", color="tab:blue")
        ax.plot(ts, [s.cpu_used_cores for s in run.samples], lw=0.9, label="used cores", color="tab:orange")
        if any(s.pressure_cores for s in run.samples):
            ax.plot(
                ts,
                [s.cpu_used_cores + (s.pressure_cores or 0) for s in run.samples],
                lw=0.7,
                ls="--",
                color="tab:red",
                label="demand (used + pressure)",
            )
        for r in run.results:
            x = (r.time - t0) / 60
            if not r.ok:
                ax.plot(x, r.vcpus_after or 0, marker="x", color="black", ls="none")
            elif (r.vcpus_after or 0) > (r.vcpus_before or 0):
                ax.plot(x, r.vcpus_after or 0, marker="^", color="green", ls="none")
            elif (r.vcpus_after or 0) < (r.vcpus_before or 0):
                ax.plot(x, r.vcpus_after or 0, marker="v", color="purple", ls="none")
        ax.set_ylim(bottom=0, top=max(s.max_vcpus for s in run.samples) + 0.5)
    ax.set_xlabel("minutes")
    ax.set_ylabel("vCPUs / cores")
    ax.set_title(f"{run.host}/{run.vm}  (▲ plug, ▼ unplug, x failed)")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_html(data: RunData) -> str:
    summary = data.summary()
    when = ""
    if data.results or data.commands:
        first = min([c.time for c in data.commands] + [r.time for r in data.results])
        when = datetime.fromtimestamp(first, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.3f}</td></tr>" for k, v in summary["scores"].items())
    counts = "".join(
        f"<tr><th>{k.replace('_', ' ')}</th><td>{summary[k]}</td></tr>"
        for k in ("vms", "samples", "commands", "results_ok", "results_failed", "vcpus_plugged", "vcpus_unplugged")
    )
    errors: dict[str, int] = defaultdict(int)
    for r in data.results:
        if not r.ok:
            errors[r.error_code.value if r.error_code else "unknown"] += 1
    error_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in sorted(errors.items()))
    figures = "".join(
        f'<figure><img alt="{html.escape(f"{h}/{v}")}" src="data:image/png;base64,{_figure(run)}"></figure>'
        for (h, v), run in sorted(data.vms.items())
    )
    payload = json.dumps(summary).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Hot-Plug Heaven run report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse;margin:1em 0}}
th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}td{{text-align:right}}img{{max-width:100%}}</style>
</head><body>
<h1>Hot-Plug Heaven run report</h1><p>{html.escape(when)}</p>
<h2>Totals</h2><table>{counts}</table>
<h2>Cost and harm (the replay metrics, for the allocation this run had)</h2><table>{rows}</table>
<p>Demand is what ran plus the pressure the source reported; without pressure, demand above the allocation
is invisible and unmet demand is understated.</p>
{f"<h2>Errors by code</h2><table>{error_rows}</table>" if error_rows else ""}
<h2>Per VM</h2>{figures}
<script type="application/json" id="run-data">{payload}</script>
</body></html>
"""
