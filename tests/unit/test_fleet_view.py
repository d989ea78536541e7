"""The run totals and live table of ``hotplug up``, fed the same messages the bus carries."""

from __future__ import annotations

import msgspec
import pytest
from rich.console import Console

from hotplug.fleet import Fleet
from hotplug.fleet_view import render
from shared.messages import ErrorCode, MemoryReading, MetricSample, Resource, ScaleCommand, ScaleResult


def test_totals_and_rows_follow_the_messages() -> None:
    fleet = Fleet()
    for t in range(10):
        fleet.on_sample(
            MetricSample(
                time=float(t),
                host="h",
                vm="a",
                online_vcpus=4,
                min_vcpus=1,
                max_vcpus=8,
                cpu_used_cores=1.0,
                interval_s=360.0,
                source="s",
                pressure_cores=0.5,
            )
        )
    fleet.on_command(
        ScaleCommand(
            id="c1",
            time=1,
            host="h",
            vm="a",
            target_vcpus=3,
            seen_vcpus=4,
            decider="d",
            reason="cpu 25% < 30% for 3 samples",
            expires_at=9,
        )
    )
    fleet.on_result(
        ScaleResult(
            command_id="c1",
            time=2,
            host="h",
            vm="a",
            ok=True,
            vcpus_before=4,
            vcpus_after=3,
            target_vcpus=3,
            duration_s=0.1,
            actuator="x",
        )
    )
    fleet.on_result(
        ScaleResult(
            command_id="c2",
            time=3,
            host="h",
            vm="a",
            ok=False,
            vcpus_before=3,
            vcpus_after=3,
            target_vcpus=2,
            duration_s=0.1,
            actuator="x",
            error_code=ErrorCode.EXPIRED,
            error="late",
        )
    )
    totals, scores = fleet.totals, fleet.tally.scores()
    assert scores["alloc_core_hours"] == pytest.approx(4.0)  # 10 samples x 4 vCPUs x 0.1 h
    assert fleet.tally.served_core_s / 3600 == pytest.approx(1.0)
    assert fleet.tally.actions == 1  # the one applied change; the refused command changed nothing
    assert scores["unmet_pct"] == pytest.approx(100 * 0.5 / 1.5)  # pressure over what ran plus pressure
    assert (totals.commands, totals.results_ok, totals.results_failed, totals.unplugs) == (1, 1, 1, 1)
    assert totals.errors == {"expired": 1}
    lines = fleet.summary_lines()
    assert "core-hours allocated: 4.000; used: 1.000 (25% of allocated)" in lines[2]
    row = fleet.rows[("h", "a")]
    assert row.last_action == "failed: expired"

    console = Console(width=160, record=True)
    console.print(render(fleet, "title"))
    text = console.export_text()
    assert "4/8 ████····" in text
    assert "failed: expired" in text


def test_memory_shows_in_rows_and_summary_only_where_sources_read_it() -> None:
    gib = 1024**3
    fleet = Fleet()
    cpu_only = MetricSample(
        time=1.0, host="h", vm="a", online_vcpus=2, min_vcpus=1, max_vcpus=4, cpu_used_cores=1.0, interval_s=1.0,
        source="s",
    )  # fmt: skip
    fleet.on_sample(cpu_only)
    console = Console(width=200, record=True)
    console.print(render(fleet, "run"))
    assert "memory GiB" not in console.export_text() and not any("memory:" in s for s in fleet.summary_lines())
    reading = MemoryReading(size_bytes=8 * gib, min_bytes=gib, max_bytes=16 * gib, used_bytes=3 * gib, oom_kills=0)
    fleet.on_sample(msgspec.structs.replace(cpu_only, time=2.0, memory=reading))
    fleet.on_result(
        ScaleResult(
            command_id="m1",
            time=3.0,
            host="h",
            vm="a",
            ok=True,
            vcpus_before=None,
            vcpus_after=None,
            duration_s=1.0,
            actuator="x",
            resource=Resource.MEMORY,
            memory_before_bytes=8 * gib,
            memory_after_bytes=6 * gib,
            target_memory_bytes=6 * gib,
        )
    )
    console = Console(width=200, record=True)
    console.print(render(fleet, "run"))
    text = console.export_text()
    assert "memory GiB" in text and "3.0 used of 8.0" in text and "memory 8GiB→6GiB" in text
    (line,) = [s for s in fleet.summary_lines() if s.startswith("memory:")]
    assert "given back 2.0 GiB in 1 changes" in line and "OOM kills 0" in line and "2.67×" in line
    assert fleet.totals.plugs == fleet.totals.unplugs == 0
