"""Commands that read a run back: ``events`` (the event log), ``report`` (an HTML page) and ``compare``
(shadow deciders against the demand that followed)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hotplug.cli.common import Subparsers, add_command, with_stream_access
from shared import bus

ORDER = 30


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    ev = add_command(
        sub, "events", cmd_events, help="print the event log (commands, results, pauses and resumes, deferred grows)"
    )
    ev.add_argument("--data-dir", type=Path, default=None)
    ev.add_argument("--nats", default=None)
    ev.add_argument("--format", choices=["table", "jsonl", "csv"], default="table")

    rpt = add_command(sub, "report", cmd_report, help="an HTML report of a run: plots per VM and the run's totals")
    rpt.add_argument("--data-dir", type=Path, default=None)
    rpt.add_argument("--nats", default=None)
    rpt.add_argument("--out", type=Path, required=True, help="the HTML file to write")

    cmp_ = add_command(
        sub, "compare", cmd_compare, help="score shadow deciders' proposals against the demand that followed"
    )
    cmp_.add_argument("--data-dir", type=Path, default=None)
    cmp_.add_argument("--nats", default=None)
    cmp_.add_argument("--json", action="store_true")


def cmd_events(args: argparse.Namespace) -> int:
    from hotplug.events import event_record, format_csv, format_jsonl

    async def collect(url: str) -> list[dict[str, object]]:
        nc = await bus.connect(url, "hotplug-events", forever=False)
        try:
            from shared.eventlog import read_all_events

            records = []
            async for subject, event in read_all_events(nc.jetstream()):
                if event is None:
                    print(f"skipped an undecodable event on {subject}", file=sys.stderr)
                else:
                    records.append(event_record(event))
            return records
        finally:
            await nc.close()

    records = with_stream_access(args, collect)
    if args.format == "jsonl":
        sys.stdout.write(format_jsonl(records))
    elif args.format == "csv":
        sys.stdout.write(format_csv(records))
    else:
        _print_event_table(records)
    return 0


def _print_event_table(records: list[dict[str, object]]) -> None:
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    from hotplug.events import change_text

    table = Table(title=f"{len(records)} events")
    for column in ("time (UTC)", "kind", "host", "vm", "id", "change", "detail"):
        table.add_column(column)
    for r in records:
        when = datetime.fromtimestamp(float(r["time"]), tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]  # type: ignore[arg-type]
        if r["kind"] == "command":
            table.add_row(
                when,
                "command",
                str(r["host"]),
                str(r["vm"]),
                str(r["id"]),
                change_text(r),
                str(r["reason"]),
            )
        elif r["kind"] in ("pause", "resume"):
            from shared.pauses import when as pause_end

            end = "until resumed" if r["until"] is None else f"until {pause_end(float(r['until']))}"  # type: ignore[arg-type]
            if r["kind"] == "resume":
                detail = f"by {r['by']}, lifting a pause {end}"
            else:
                detail = f"by {r['by']} {end}" + (f": {r['reason']}" if r["reason"] else "")
            table.add_row(when, str(r["kind"]), str(r["host"]), str(r["vm"]), str(r["id"]), "", detail)
        elif r["kind"] == "deferral":
            from hotplug.pool_report import deferral_detail

            kind = f"memory grow {r['action']}" if r.get("resource") == "memory" else f"grow {r['action']}"
            table.add_row(when, kind, str(r["host"]), str(r["vm"]), "", change_text(r), deferral_detail(r))
        else:
            detail = "ok" if r["ok"] else f"{r['error_code']}: {r['error']}"
            table.add_row(
                when,
                "result",
                str(r["host"]),
                str(r["vm"]),
                str(r["command_id"]),
                change_text(r),
                detail,
            )
    Console().print(table)


async def _read_run(url: str) -> tuple[list[Any], list[Any], list[Any]]:
    """Metric samples, commands and results of a run, from its streams."""
    from shared.eventlog import read_run

    nc = await bus.connect(url, "hotplug-read", forever=False)
    try:
        return await read_run(nc.jetstream())
    finally:
        await nc.close()


def cmd_report(args: argparse.Namespace) -> int:
    from evaluation.report import assemble, render_html

    samples, commands, results = with_stream_access(args, _read_run)
    data = assemble(samples, commands, results)
    args.out.write_text(render_html(data))
    s = data.summary()
    print(f"{args.out}: {s['vms']} VMs, {s['commands']} commands, {s['results_ok']} ok / {s['results_failed']} failed")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from evaluation.render import render_table
    from evaluation.shadow import score_shadows
    from shared.eventlog import read_metrics
    from shared.messages import MetricSample, ScaleCommand

    async def collect(url: str) -> tuple[list[MetricSample], list[ScaleCommand]]:
        nc = await bus.connect(url, "hotplug-compare", forever=False)
        try:
            return await read_metrics(nc.jetstream(), proposals=True)
        finally:
            await nc.close()

    samples, proposals = with_stream_access(args, collect)
    if not proposals:
        print("no shadow proposals found: run a decider with --shadow beside the active one", file=sys.stderr)
    report = {
        "vms": len({(s.host, s.vm) for s in samples}),
        "steps": len(samples),
        "policies": score_shadows(samples, proposals),
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        render_table(report, f"{report['vms']} VMs, {report['steps']} samples: active allocation vs shadows")
    return 0
