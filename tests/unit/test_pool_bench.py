"""The pool benchmark's run (evaluation.bench.pool_run): one host, arriving jobs, and the decider's and actuator's
pure code at 1-s steps. Short spans on a small host, so the unit tier stays fast."""

from __future__ import annotations

import pytest

from evaluation.bench.pool import MEMORY_COLUMNS, PLAIN, PRIORITIES, render_table, setups, targets
from evaluation.bench.pool_run import FIXED, POOL_MEMORY_KEYS, Setup, run_pool
from services.decider.memory import MemoryPolicy
from services.decider.registry import build_policy
from services.simulator.jobs import Job
from services.simulator.vm_memory import MEMORY_PER_VCPU_BYTES, kernel_bytes
from shared.units import GIB

SPAN_S = 1800.0


def idle_jobs(count: int, size: int, gap_s: float) -> list[Job]:
    """Jobs that ask for ``size`` vCPUs and sit idle (a notebook nobody uses) for the whole span."""
    return [Job(f"job-{i:02d}", size, size, "idle", i * gap_s, lifetime_s=SPAN_S * 2, seed=i) for i in range(count)]


def default_setup() -> Setup:
    return Setup("default", lambda: build_policy("default"), lambda job: PLAIN)


def test_fixed_sizes_leave_jobs_waiting_for_cores_that_idle_vms_hold() -> None:
    run = run_pool(Setup(FIXED, None, lambda job: PLAIN), idle_jobs(4, 4, 10.0), cores=8, capacity=8, span_s=SPAN_S)
    scores = run.scores()
    assert scores["started"] == 2  # two 4-vCPU jobs fill the 8-vCPU host; the other two wait the whole span
    assert scores["wait_p95_s"] > SPAN_S / 2
    assert scores["orders"] == 0 and scores["changes_per_vm_hour"] == 0


def test_default_gives_idle_cores_back_so_waiting_jobs_start() -> None:
    run = run_pool(default_setup(), idle_jobs(4, 4, 10.0), cores=8, capacity=8, span_s=SPAN_S)
    scores = run.scores()
    assert scores["started"] == 4
    assert scores["wait_p95_s"] < SPAN_S / 2
    assert scores["max_over_capacity"] == 0
    assert scores["unmet_pct"] < 1.0


def test_nothing_is_ever_committed_above_capacity_under_load() -> None:
    busy = [Job(f"b-{i}", 4, 4, "batch", i * 30.0, work_s=900.0, seed=i) for i in range(8)]
    for setup in setups(["default"]):
        scores = run_pool(setup, busy, cores=12, capacity=12, span_s=SPAN_S).scores()
        assert scores["max_over_capacity"] == 0, setup.name


def test_priorities_reach_the_planner_by_profile() -> None:
    named = {s.name: s for s in setups(["default"])}
    batch = Job("b", 2, 2, "batch", 0.0, work_s=60.0)
    assert named["default+priorities"].settings(batch) is PRIORITIES["batch"]
    assert PRIORITIES["batch"].preemptible and PRIORITIES["inference"].priority > PRIORITIES["batch"].priority
    assert named["default"].settings(batch) is PLAIN


def test_the_targets_compare_default_with_fixed_sizes() -> None:
    row = {
        "wait_p95_s": 10.0,
        "completed": 20,
        "host_use_pct": 40.0,
        "unmet_pct": 0.5,
        "slowdown_p95": 1.1,
        "max_over_capacity": 0,
    }
    fixed = {**row, "wait_p95_s": 1000.0, "completed": 10, "host_use_pct": 20.0}
    table = {"busy": {FIXED: fixed, "default": row}, "overload": {FIXED: fixed, "default": row}}
    met = targets(table, ["busy", "overload"])
    assert all(met.values())
    table["overload"]["default"] = {**row, "completed": 17}
    assert not targets(table, ["busy", "overload"])["overload: completed >= 1.8x fixed"]
    report = {"results": table, "rates_per_hour": {"busy": 1.0, "overload": 4.0}, "targets": met}
    assert "| busy (1/h) | default |" in render_table({**report, "results": {"busy": {"default": full(row)}}})


def full(row: dict[str, float]) -> dict[str, float]:
    return {
        "wait_p50_s": 0,
        "slowdown_p50": 1,
        "committed_pct": 50,
        "changes_per_vm_hour": 1,
        "undone_pct": 0,
        "host_full": 0,
        **dict.fromkeys(POOL_MEMORY_KEYS, 0.0),
        **row,
    }


def test_param_reaches_the_named_policys_runs_only() -> None:
    """``--param default.KEY=VALUE`` builds ``default`` and ``default+priorities`` with it; fixed sizes have no
    policy and other policies keep their own parameters."""
    made = {s.name: s for s in setups(["default", "threshold"], {"default": {"need_window_s": "150"}})}
    default_policy, _ = made["default"].policy()  # type: ignore[misc]
    prioritised, _ = made["default+priorities"].policy()  # type: ignore[misc]
    threshold, _ = made["threshold"].policy()  # type: ignore[misc]
    assert default_policy.params.need_window_s == 150.0
    assert prioritised.params.need_window_s == 150.0
    assert made[FIXED].policy is None
    assert threshold.params == build_policy("threshold")[0].params


def test_a_bad_param_fails_before_any_run() -> None:
    from evaluation.bench.pool import PoolOptions, bench_pool
    from services.decider.registry import ParamError

    runs: list[str] = []
    with pytest.raises(ParamError, match="need_window_s"):
        bench_pool(PoolOptions(rates=(1.0,), params={"default": {"need_window_s": "-1"}}), progress=runs.append)
    assert runs == []


def test_the_live_decisions_bench_hands_each_decider_its_own_params() -> None:
    from evaluation.bench.decisions import params_for

    given = ("default.caution_s=5.9", "threshold.upper=0.9", "guard.max_changes=4")
    assert params_for("default", given) == ["--param", "default.caution_s=5.9", "--param", "guard.max_changes=4"]
    assert params_for("hpa", given) == ["--param", "guard.max_changes=4"]


# Memory: the same runs, each VM's memory read as the collector reads it, scored by the live tally.

IDLE_ANON_SHARE = 0.05  # services.simulator.memory: an idle VM's steady anonymous memory, a share of its request


def test_a_pool_run_reports_memory_and_fixed_sizes_hold_what_was_asked() -> None:
    """Fixed sizes: every VM keeps its request, so memory allocated ÷ used is request ÷ what the guest uses (its
    kernel's part, as MemTotal - MemAvailable counts it, and its idle job's)."""
    run = run_pool(Setup(FIXED, None, lambda job: PLAIN), idle_jobs(2, 4, 10.0), cores=8, capacity=8, span_s=600.0)
    scores = run.scores()
    assert set(POOL_MEMORY_KEYS) <= set(scores)
    requested = 4 * MEMORY_PER_VCPU_BYTES
    used = kernel_bytes(requested) + IDLE_ANON_SHARE * requested
    assert scores["memory_ratio_to_oracle"] == pytest.approx(requested / used, rel=1e-6)
    # 8 GiB each: one VM read at every step from 1 s to 600 s, the other from its start at 10 s
    assert scores["memory_alloc_gib_hours"] == pytest.approx(8 * (600 + 591) / 3600, rel=1e-9)
    assert scores["memory_orders"] == scores["memory_changes_per_vm_hour"] == scores["memory_given_back_gib"] == 0
    assert scores["swap_pct"] == scores["oom_kills"] == 0


def test_default_gives_idle_memory_back_without_swapping() -> None:
    fixed, default, _ = (
        run_pool(s, idle_jobs(2, 4, 10.0), cores=8, capacity=8, span_s=SPAN_S) for s in setups(["default"])
    )
    assert (fixed.setup, default.setup) == (FIXED, "default")
    m, f = default.scores(), fixed.scores()
    assert m["memory_orders"] > 0 and m["memory_changes_per_vm_hour"] > 0
    assert m["memory_given_back_gib"] > 0
    assert m["memory_ratio_to_oracle"] < f["memory_ratio_to_oracle"]
    assert m["swap_pct"] == 0 and m["oom_kills"] == 0 and m["memory_refused"] == 0


def test_memory_orders_change_no_vcpu_figure_while_no_guest_swaps() -> None:
    """The memory lane draws nothing from the CPU's random streams and, while no guest swaps, takes nothing from
    its CPU: the vCPU figures are those of the same run without a memory rule."""
    busy = [Job(f"b-{i}", 4, 4, "batch", i * 30.0, work_s=900.0, seed=i) for i in range(8)]
    plain = run_pool(default_setup(), busy, cores=12, capacity=12, span_s=SPAN_S)
    memory = Setup("default", default_setup().policy, lambda job: PLAIN, MemoryPolicy())
    moved = run_pool(memory, busy, cores=12, capacity=12, span_s=SPAN_S).scores()
    assert moved["memory_orders"] > 0 and moved["swap_pct"] == 0
    assert {k: v for k, v in moved.items() if k not in POOL_MEMORY_KEYS} == {
        k: v for k, v in plain.scores().items() if k not in POOL_MEMORY_KEYS
    }


def test_on_a_host_short_of_memory_given_back_memory_starts_waiting_jobs() -> None:
    """Room for two and a half 8-GiB requests: fixed sizes keep two jobs waiting; the memory rule gives back a
    quarter of each idle VM (its largest shrink, once in the span), and the 4 GiB the first two free start a third."""
    fixed, default, _ = (
        run_pool(s, idle_jobs(4, 4, 10.0), cores=16, capacity=16, span_s=SPAN_S, memory_capacity_bytes=20 * GIB)
        for s in setups(["default"])
    )
    assert fixed.scores()["started"] == 2
    scores = default.scores()
    assert scores["started"] == 3
    assert scores["memory_given_back_gib"] == pytest.approx(3 * 2.0)
    assert scores["oom_kills"] == 0 and scores["memory_refused"] == 0


def test_the_memory_table_shows_every_memory_figure() -> None:
    assert {key for key, _, _ in MEMORY_COLUMNS} == set(POOL_MEMORY_KEYS)
    row = full({"wait_p95_s": 1, "completed": 1, "host_use_pct": 1, "unmet_pct": 0, "slowdown_p95": 1})
    row["max_over_capacity"] = 0
    row["memory_ratio_to_oracle"] = 2.5
    report = {"results": {"busy": {FIXED: row}}, "rates_per_hour": {"busy": 1.0}, "targets": {}}
    table = render_table({**report, "host_memory_bytes": None})
    assert "| busy (1/h) | fixed | 0 | 0 | 0 | 0.00 | 2.500 | 0.0000 |" in table
    assert "not limited" in table


def test_the_command_takes_the_host_memory_and_the_memory_rules_params(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from hotplug import cli

    argv = ["bench", "pool", "--cores", "8", "--hours", "0.05", "--seeds", "1", "--rates", "30", "--json"]
    assert cli.main([*argv, "--host-memory", "64GiB", "--param", "memory.headroom=0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["host_memory_bytes"] == 64 * GIB
    assert set(POOL_MEMORY_KEYS) <= set(report["results"]["rate 30/h"][FIXED])
    assert cli.main([*argv, "--param", "memory.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err
