"""The pure scoring of live decisions (``evaluation.decisions``) and ``hotplug up``'s summary, on synthetic events."""

from __future__ import annotations

import msgspec
import pytest

from evaluation.decisions import (
    Change,
    applied_changes,
    in_window,
    refusals,
    sample_health,
    score_run,
    undone_changes,
)
from hotplug.fleet import Fleet
from shared.messages import ErrorCode, MemoryReading, MetricSample, Resource, ScaleCommand, ScaleResult


def result(
    t: float,
    before: int,
    after: int,
    vm: str = "a",
    ok: bool = True,
    code: ErrorCode | None = None,
    cid: str | None = None,
    host: str = "h",
) -> ScaleResult:
    return ScaleResult(
        command_id=cid or f"c{t:g}{vm}",
        time=t,
        host=host,
        vm=vm,
        ok=ok,
        vcpus_before=before,
        vcpus_after=after if ok else before,
        target_vcpus=after,
        duration_s=0.1,
        actuator="x",
        error_code=code,
    )


def command(t: float, vm: str = "a", cid: str | None = None, host: str = "h") -> ScaleCommand:
    return ScaleCommand(
        id=cid or f"c{t:g}{vm}",
        time=t,
        host=host,
        vm=vm,
        target_vcpus=2,
        seen_vcpus=1,
        decider="d",
        reason="r",
        expires_at=t + 30,
    )


def sample(
    t: float, online: int, used: float, pressure: float = 0.0, vm: str = "a", host: str = "h", interval: float = 1.0
) -> MetricSample:
    return MetricSample(
        time=t,
        host=host,
        vm=vm,
        online_vcpus=online,
        min_vcpus=1,
        max_vcpus=8,
        cpu_used_cores=used,
        interval_s=interval,
        source="simulator",
        pressure_cores=pressure,
    )


def test_a_change_reversed_by_the_next_one_within_60_s_is_undone() -> None:
    changes = applied_changes(
        [
            result(0, 2, 3),  # reversed by 3→2 at 30 s: undone
            result(30, 3, 2),  # followed by 2→4 at 100 s, 70 s later: too late to count
            result(100, 2, 4),  # then 4→3 (a partial reversal) at 160 s, exactly 60 s: undone
            result(160, 4, 3),  # then 3→2 in the same direction: not undone
            result(170, 3, 2),  # the last change has no next one
        ]
    )
    undone = undone_changes(changes)
    assert [(c.time, c.before, c.after) for c in undone] == [(0, 2, 3), (100, 2, 4)]


def test_undone_looks_at_the_same_vm_only_and_at_the_next_change_only() -> None:
    changes = [
        Change(0, "h", "a", 1, 2),
        Change(10, "h", "b", 2, 1),
        Change(20, "h2", "a", 2, 1),
        Change(30, "h", "a", 2, 3),
        Change(40, "h", "a", 3, 2),
    ]
    # a: 1→2 is followed by 2→3 (same direction), so it stands even though 3→2 comes within 60 s of it
    assert undone_changes(changes) == [Change(30, "h", "a", 2, 3)]


def test_results_that_change_nothing_or_fail_are_not_changes() -> None:
    results = [result(0, 2, 2), result(1, 2, 3, ok=False, code=ErrorCode.RATE_LIMITED), result(2, 2, 3)]
    assert applied_changes(results) == [Change(2, "h", "a", 2, 3)]
    assert refusals(results) == {"rate-limited": 1}


def test_score_run_counts_refusals_changes_and_vm_hours() -> None:
    # two VMs, half an hour each at 1-s samples: one VM-hour
    samples = [sample(float(t), 2, 1.0, vm=vm) for vm in ("a", "b") for t in range(1800)]
    commands = [command(float(t)) for t in (10, 20, 30, 40)] + [command(50, vm="b")]
    results = [
        result(10, 2, 3),
        result(20, 3, 2),
        result(30, 2, 3, ok=False, code=ErrorCode.RATE_LIMITED),
        result(40, 2, 3, ok=False, code=ErrorCode.GUEST_REFUSED),
    ]  # b's command is still unanswered
    score = score_run(samples, commands, results)
    assert (score["commands"], score["results"], score["unanswered"]) == (5, 4, 1)
    assert score["refused"] == 2 and score["refused_pct"] == 50.0
    assert score["refused_by_code"] == {"guest-refused": 1, "rate-limited": 1}
    assert (score["changes"], score["undone_60s"], score["undone_pct"]) == (2, 1, 50.0)
    assert score["vm_hours"] == pytest.approx(1.0)
    assert score["changes_per_vm_hour"] == pytest.approx(2.0)
    assert score["vms"] == 2 and score["samples"] == 3600


def test_cost_and_unmet_are_scored_on_used_plus_pressure_as_compare_does() -> None:
    # demand 3 cores: 2 run on 2 vCPUs, 1 waits (pressure); the oracle would have given 3
    samples = [sample(float(t), 2, 2.0, pressure=1.0) for t in range(10)]
    score = score_run(samples, [], [])
    assert score["cost_x_oracle"] == pytest.approx(2 / 3, abs=1e-3)
    assert score["unmet_pct"] == pytest.approx(100 / 3, abs=1e-2)
    # over-allocated and fully served
    score = score_run([sample(float(t), 4, 1.5) for t in range(10)], [], [])
    assert score["cost_x_oracle"] == pytest.approx(2.0)
    assert score["unmet_pct"] == 0.0


def test_an_empty_run_scores_zeros_not_errors() -> None:
    score = score_run([], [], [])
    assert score["changes_per_vm_hour"] == 0.0 and score["refused_pct"] == 0.0
    assert score["cost_x_oracle"] is None and score["unmet_pct"] is None


def test_in_window_keeps_the_results_of_the_commands_given_in_it() -> None:
    samples = [sample(float(t), 2, 1.0) for t in range(0, 20)]
    commands = [command(3), command(9), command(15)]
    results = [result(4, 2, 3, cid="c3a"), result(11, 3, 2, cid="c9a"), result(16, 2, 3, cid="c15a")]
    s, c, r = in_window(samples, commands, results, 5.0, 10.0)
    assert [x.time for x in s] == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert [x.id for x in c] == ["c9a"]
    assert [x.command_id for x in r] == ["c9a"]  # answered after the window's end: still counted


def test_sample_health_counts_missing_and_late_samples() -> None:
    samples = [sample(float(t), 2, 1.0) for t in range(0, 11) if t not in (5, 6)]
    samples[5] = sample(7.0, 2, 1.0, interval=3.0)  # the ticks at 5 and 6 s were skipped
    health = sample_health(samples, 1.0, 10.0)
    assert (health["received"], health["expected"], health["late"]) == (9, 10, 1)
    assert health["missing_pct"] == pytest.approx(10.0)
    assert health["longest_interval_s"] == 3.0
    full = sample_health([sample(float(t), 2, 1.0) for t in range(0, 11)], 1.0, 10.0)
    assert (full["received"], full["expected"], full["missing_pct"]) == (11, 10, 0.0)


def test_up_summary_says_changes_per_vm_and_refusals_by_code() -> None:
    fleet = Fleet()
    for vm in ("vm-01", "vm-02", "vm-03"):
        fleet.on_sample(sample(0.0, 2, 1.0, vm=vm))
    fleet.on_result(result(1, 2, 3, vm="vm-01"))
    fleet.on_result(result(20, 3, 2, vm="vm-01"))
    fleet.on_result(result(5, 2, 1, vm="vm-02"))
    fleet.on_result(result(6, 1, 1, vm="vm-02", ok=False, code=ErrorCode.RATE_LIMITED))
    fleet.on_result(result(7, 1, 1, vm="vm-02", ok=False, code=ErrorCode.RATE_LIMITED))
    fleet.on_result(result(8, 1, 1, vm="vm-03", ok=False, code=ErrorCode.GUEST_REFUSED))
    lines = fleet.summary_lines()
    assert "changes per VM: vm-01 2, vm-02 1, vm-03 0; 1 of 3 undone within 60 s" in lines
    assert "refused commands: 3 (guest-refused=1, rate-limited=2)" in lines
    assert lines[0] == "VMs: 3"  # what was there before stays


def test_up_summary_of_a_calm_run_says_zero_refused_and_spreads_many_vms() -> None:
    fleet = Fleet()
    for i in range(20):
        fleet.on_sample(sample(0.0, 2, 1.0, vm=f"vm-{i:02d}"))
    for t in range(5):
        fleet.on_result(result(float(t * 100), 2 + t % 2, 3 - t % 2, vm="vm-07"))
    lines = fleet.summary_lines()
    assert "refused commands: 0" in lines
    assert "changes per VM: min 0, median 0, max 5 (vm-07); 0 of 5 undone within 60 s" in lines


def test_memory_orders_are_scored_apart_and_leave_the_vcpu_figures_as_they_were() -> None:
    gib = 1024**3
    reading = MemoryReading(size_bytes=4 * gib, min_bytes=gib, max_bytes=8 * gib, used_bytes=2 * gib, oom_kills=0)
    samples = [msgspec.structs.replace(sample(float(t), 2, 1.0), memory=reading) for t in range(3600)]
    vcpu_only = score_run(samples, [command(10)], [result(10, 2, 3)])
    memory_command = ScaleCommand(
        id="m1", time=20.0, host="h", vm="a", resource=Resource.MEMORY, target_memory_bytes=3 * gib,
        seen_memory_bytes=4 * gib, decider="d", reason="r", expires_at=50.0,
    )  # fmt: skip
    memory_result = ScaleResult(
        command_id="m1", time=21.0, host="h", vm="a", ok=True, vcpus_before=None, vcpus_after=None, duration_s=1.0,
        actuator="x", resource=Resource.MEMORY, memory_before_bytes=4 * gib, memory_after_bytes=3 * gib,
    )  # fmt: skip
    both = score_run(samples, [command(10), memory_command], [result(10, 2, 3), memory_result])
    assert {k: v for k, v in both.items() if k != "memory"} == {k: v for k, v in vcpu_only.items() if k != "memory"}
    memory = both["memory"]
    assert isinstance(memory, dict)
    assert (memory["commands"], memory["changes"], memory["oom_kills"]) == (1, 1, 0)
    assert memory["x_used"] == pytest.approx(2.0) and memory["given_back_gib"] == pytest.approx(1.0)
    assert memory["changes_per_vm_hour"] == pytest.approx(1.0)
    assert score_run([sample(1.0, 2, 1.0)], [], [])["memory"] is None
