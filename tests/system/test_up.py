"""``hotplug up`` as a user runs it: supervised children, restart after kill -9, the event log afterwards."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hotplug.harness.poll import wait_until
from hotplug.harness.processes import OutputProcess, run_hotplug, sigkill
from hotplug.harness.scrape import metric_or_zero
from tests.conftest import LIVELY_DECIDER


def test_up_restarts_a_killed_child_and_keeps_its_event_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "run"
    out = OutputProcess.hotplug(
        "up",
        "--vms",
        "4",
        "--speed",
        "5",
        "--duration",
        "100",
        "--data-dir",
        str(data_dir),
        "--no-view",
        *LIVELY_DECIDER,  # the plumbing under test, in motion
    )
    proc = out.proc
    try:
        for service in ("simulator", "collector", "decider", "actuator"):
            out.wait_for(rf"^{service} metrics: http://127\.0\.0\.1:\d+/metrics$", timeout=30)
        collector_url = out.wait_for(r"^collector metrics: (\S+)$", 1).group(1)
        pid = int(out.wait_for(r"started collector \(pid (\d+)\)", 5).group(1))
        out.wait_for(r"^vm-\d+: \d+ -> \d+ ok$", timeout=30)  # the loop acts

        mark = len(out.lines)
        sigkill(pid)
        out.wait_for(r"collector exited with code -9; restarting", timeout=10, after=mark)
        new_pid = int(out.wait_for(r"started collector \(pid (\d+)\)", timeout=10, after=mark).group(1))
        assert new_pid != pid
        # the restarted collector publishes again, and the loop goes on acting
        published = wait_until(
            lambda: metric_or_zero(collector_url, "hotplug_collector_samples_published_total") > 0, 20
        )
        assert published, "restarted collector published nothing"
        after_restart = len(out.lines)
        out.wait_for(r"^vm-\d+: \d+ -> \d+ ok$", timeout=30, after=after_restart)
        assert proc.wait(timeout=60) == 0, out.text()
    finally:
        out.interrupt(timeout_s=30)
    text = out.text()
    assert "collector was restarted 1 time(s)" in text
    summary = out.wait_for(r"commands: (\d+); results: (\d+) ok, (\d+) failed", 1)
    assert int(summary.group(1)) > 0
    assert re.search(r"core-hours allocated: [\d.]+; used: [\d.]+", text)
    assert not (data_dir / "broker.json").exists()

    events = run_hotplug("events", "--data-dir", str(data_dir), "--format", "jsonl")
    assert events.returncode == 0, events.stderr
    records = [json.loads(line) for line in events.stdout.splitlines()]
    commands = {r["id"]: r for r in records if r["kind"] == "command"}
    results = [r for r in records if r["kind"] == "result"]
    assert commands
    for r in records:
        assert {"kind", "time", "host", "vm"} <= r.keys()
    for c in commands.values():
        assert {"id", "target_vcpus", "seen_vcpus", "decider", "reason"} <= c.keys()
        assert [r["command_id"] for r in results].count(c["id"]) == 1, f"command {c['id']} needs one result"
    assert {r["command_id"] for r in results} <= commands.keys()
    changes = [(r["vcpus_before"], r["vcpus_after"]) for r in results if r["ok"]]
    assert any(a > b for b, a in changes), "expected a plug"
    assert any(a < b for b, a in changes), "expected an unplug"
    assert int(summary.group(2)) + int(summary.group(3)) == len(results)

    as_csv = run_hotplug("events", "--data-dir", str(data_dir), "--format", "csv")
    assert as_csv.returncode == 0
    assert len(as_csv.stdout.strip().splitlines()) == len(records) + 1
    table = run_hotplug("events", "--data-dir", str(data_dir))
    assert table.returncode == 0
    assert f"{len(records)} events" in table.stdout

    # the HTML report of the same run agrees with its event log
    report_path = tmp_path / "report.html"
    report = run_hotplug("report", "--data-dir", str(data_dir), "--out", str(report_path))
    assert report.returncode == 0, report.stderr
    page = report_path.read_text()
    embedded = re.search(r'<script type="application/json" id="run-data">(.*?)</script>', page, re.S)
    assert embedded is not None, "the report embeds its data"
    data = json.loads(embedded[1])
    ok = [r for r in results if r["ok"]]
    assert data["commands"] == len(commands)
    assert (data["results_ok"], data["results_failed"]) == (len(ok), len(results) - len(ok))
    assert data["vcpus_plugged"] == sum(max(0, r["vcpus_after"] - r["vcpus_before"]) for r in ok)
    assert data["vcpus_unplugged"] == sum(max(0, r["vcpus_before"] - r["vcpus_after"]) for r in ok)
    for key, per_vm in data["per_vm"].items():
        vm = key.split("/", 1)[1]
        assert per_vm["results"] == sum(1 for r in results if r["vm"] == vm)
        assert per_vm["samples"] > 0
    assert page.count("data:image/png;base64,") == data["vms"] == 4
    assert data["scores"]["alloc_core_hours"] > data["scores"]["oracle_core_hours"] * 0.5
    assert 0 <= data["scores"]["unmet_pct"] <= 100


def test_events_without_a_log_says_so(tmp_path: Path) -> None:
    done = run_hotplug("events", "--data-dir", str(tmp_path / "none"))
    assert done.returncode == 2
    assert "no event log" in done.stderr


def test_schema_writes_one_json_schema_per_message(tmp_path: Path) -> None:
    done = run_hotplug("schema", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "Deferral.schema.json",
        "HostState.schema.json",
        "MetricSample.schema.json",
        "PauseEvent.schema.json",
        "ScaleCommand.schema.json",
        "ScaleResult.schema.json",
    ]
    host = json.loads((tmp_path / "HostState.schema.json").read_text())
    assert {"host", "capacity_vcpus", "committed_vcpus", "free_vcpus"} <= set(host["$defs"]["HostState"]["required"])
    pause = json.loads((tmp_path / "PauseEvent.schema.json").read_text())
    assert {"vm", "host"} <= set(pause["$defs"]["PauseEvent"]["required"])
    command = json.loads((tmp_path / "ScaleCommand.schema.json").read_text())
    definition = command["$defs"]["ScaleCommand"]
    assert set(definition["required"]) >= {"id", "vm", "expires_at"}
    # schema v2: the sizes are the resource's (vcpu: target_vcpus; memory: target_memory_bytes)
    assert {"resource", "target_vcpus", "target_memory_bytes"} <= set(definition["properties"])


def test_bad_policy_parameters_fail_before_anything_starts(tmp_path: Path) -> None:
    done = run_hotplug("up", "--policy", "threshold", "--param", "threshold.nope=1", "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2
    assert "bad parameter" in done.stderr
    assert not (tmp_path / "d").exists()


def test_up_on_a_three_node_cluster_keeps_a_replicated_event_log(tmp_path: Path) -> None:
    """``hotplug up --cluster 3``: three nats-server nodes from the wheel, the loop on them, and afterwards the
    stopped cluster's stores read back by ``hotplug events``: every command with its one result."""
    data_dir = tmp_path / "run"
    done = run_hotplug(
        "up",
        "--cluster",
        "3",
        "--vms",
        "4",
        "--speed",
        "5",
        "--duration",
        "60",
        "--data-dir",
        str(data_dir),
        "--no-view",
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "embedded cluster of 3 nodes" in done.stdout
    assert sorted(p.name for p in (data_dir / "nats").glob("n[0-9]")) == ["n1", "n2", "n3"]
    events = run_hotplug("events", "--data-dir", str(data_dir), "--format", "jsonl", timeout=120)
    assert events.returncode == 0, events.stderr[-2000:]
    records = [json.loads(line) for line in events.stdout.splitlines() if line]
    commands = {r["id"] for r in records if r["kind"] == "command"}
    results = [r["command_id"] for r in records if r["kind"] == "result"]
    assert commands
    assert len(results) == len(set(results)) and set(results) <= commands


TRACE = "time_s,vm,demand_vcpus,max_vcpus\n0,web,0.5,4\n30,web,3.5,4\n0,db,1.5,2\n40,db,0.2,2\n"


def test_up_on_a_trace_runs_one_vm_per_trace_vm_and_sums_up_per_vm(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    data_dir = tmp_path / "run"
    done = run_hotplug(
        "up",
        "--trace",
        str(trace),
        "--speed",
        "10",
        "--duration",
        "60",
        "--data-dir",
        str(data_dir),
        "--no-view",
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "VMs: 2" in done.stdout
    changes = re.search(r"^changes per VM: db (\d+), web (\d+); (\d+) of (\d+) undone within 60 s$", done.stdout, re.M)
    assert changes is not None, done.stdout
    assert re.search(r"^refused commands: \d+", done.stdout, re.M)
    events = run_hotplug("events", "--data-dir", str(data_dir), "--format", "jsonl")
    records = [json.loads(line) for line in events.stdout.splitlines() if line]
    assert {r["vm"] for r in records} <= {"web", "db"}
    applied = [r for r in records if r["kind"] == "result" and r["ok"] and r["vcpus_before"] != r["vcpus_after"]]
    for i, vm in enumerate(("db", "web"), start=1):
        assert int(changes.group(i)) == sum(1 for r in applied if r["vm"] == vm)


def test_up_refuses_a_bad_trace_in_one_line_before_starting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("time,vm,cpu\n0,a,1\n")
    for path, message in (
        (bad, "header must name demand_vcpus, time_s, vm"),
        (tmp_path / "none.csv", "no such file or directory"),
    ):
        done = run_hotplug("up", "--trace", str(path), "--data-dir", str(tmp_path / "d"))
        assert done.returncode == 2
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "d").exists()


ARRIVALS = (
    "arrival_s,name,requested_vcpus,max_vcpus,profile,lifetime_s,work_s\n"
    "0,svc,1,2,notebook,20,\n"
    "5,train,2,4,training,,600\n"
)


def test_up_with_a_full_host_and_arriving_jobs_sets_their_waits_against_fixed_sizes(tmp_path: Path) -> None:
    arrivals = tmp_path / "arrivals.csv"
    arrivals.write_text(ARRIVALS)
    done = run_hotplug(
        "up",
        *("--vms", "1", "--host-cores", "4", "--arrivals-file", str(arrivals)),
        *("--speed", "10", "--duration", "60", "--data-dir", str(tmp_path / "run"), "--no-view"),
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(
        r"^host: 4 cores, capacity 4 vCPUs; host wait [\d.]+ core-hours \(fixed sizes: [\d.]+\)$", done.stdout, re.M
    )
    live = re.search(
        r"^jobs with hot-plug: 2 arrived, (\d) started, (\d) finished, (\d) waiting; wait p50", done.stdout, re.M
    )
    fixed = re.search(r"^jobs with fixed sizes \(same arrivals\): 2 arrived, (\d) started", done.stdout, re.M)
    assert live is not None and fixed is not None, done.stdout
    assert int(live.group(1)) + int(live.group(3)) == 2
    assert int(live.group(2)) >= 1  # svc lives 20 s of the 60
    # vm-01 boots at 2 of 4 vCPUs: with fixed sizes svc (1) starts at once, then train (2) once svc has gone
    assert fixed.group(1) == "2"
