"""``hotplug bench decisions`` for two simulated minutes: the JSON's shape, and its counts against the event log
the run kept. Not the figures themselves (they belong to the policies), and no timing."""

from __future__ import annotations

import json
from pathlib import Path

from hotplug.harness.processes import run_hotplug

# Not one of the benchmark's default seeds (11, 12): those stay unseen by tests.
SEED = "5"


def test_bench_decisions_reports_what_the_event_log_holds(tmp_path: Path) -> None:
    data_dir = tmp_path / "bench"
    done = run_hotplug(
        "bench",
        "decisions",
        "--policy",
        "default",
        "--seeds",
        SEED,
        "--duration",
        "120",
        "--speed",
        "20",
        "--vms",
        "3",
        "--data-dir",
        str(data_dir),
        "--json",
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["bench"] == "decisions" and report["seeds"] == [5] and report["duration_s"] == 120.0
    assert list(report["policies"]) == ["default"]
    pooled = report["policies"]["default"]
    one = pooled["seeds"][SEED]
    keys = {
        "vms",
        "samples",
        "vm_hours",
        "commands",
        "results",
        "unanswered",
        "refused",
        "refused_pct",
        "refused_by_code",
        "changes",
        "undone_60s",
        "undone_pct",
        "changes_per_vm_hour",
        "cost_x_oracle",
        "unmet_pct",
        "alloc_core_hours",
        "oracle_core_hours",
    }
    assert keys <= pooled.keys() and keys <= one.keys()
    assert {"received", "expected", "late", "lag_p95_s", "decider_dropped"} <= one["health"].keys()
    for key in keys - {"refused_by_code"}:
        assert pooled[key] == one[key], key  # one seed: the pool is that seed
    assert one["vms"] == 3 and one["health"]["received"] == one["samples"] > 0

    # the counts are those of the kept event log, over the window on the run's clock
    start, end = one["window"]
    events = run_hotplug("events", "--data-dir", str(data_dir / f"default-seed{SEED}"), "--format", "jsonl")
    assert events.returncode == 0, events.stderr
    records = [json.loads(line) for line in events.stdout.splitlines() if line]
    commands = {r["id"] for r in records if r["kind"] == "command" and start <= r["time"] <= end}
    results = [r for r in records if r["kind"] == "result" and r["command_id"] in commands]
    refused = [r for r in results if not r["ok"]]
    changes = [r for r in results if r["ok"] and r["vcpus_before"] != r["vcpus_after"]]
    assert one["commands"] == len(commands) and one["results"] == len(results)
    assert one["unanswered"] == len(commands) - len({r["command_id"] for r in results})
    assert one["refused"] == len(refused) == sum(one["refused_by_code"].values())
    for code, count in one["refused_by_code"].items():
        assert count == sum(1 for r in refused if r["error_code"] == code)
    assert one["changes"] == len(changes)
    assert 0 <= one["undone_60s"] <= max(0, one["changes"] - 1)
    assert abs(one["changes_per_vm_hour"] - one["changes"] / one["vm_hours"]) < 0.01 * max(1, one["changes"])
    assert one["cost_x_oracle"] > 0 and 0 <= one["unmet_pct"] <= 100


def test_bench_decisions_refuses_bad_options_before_starting() -> None:
    for args, message in (
        (["--policy", "nope"], "unknown policy 'nope'"),
        (["--seeds", "a,b"], "--seeds takes"),
        (["--trace", "/nonexistent/trace.csv"], "no such file"),
    ):
        done = run_hotplug("bench", "decisions", *args)
        assert done.returncode == 2 and message in done.stderr, done.stderr
