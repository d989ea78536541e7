"""The audit that judges fault runs: pure, so each kind of damage is shown to be caught on made-up logs."""

from __future__ import annotations

from evaluation.audit import audit
from shared.messages import ErrorCode, MetricSample, ScaleCommand, ScaleResult


def command(cid: str, vm: str = "vm-01", seen: int = 2, target: int = 3) -> ScaleCommand:
    return ScaleCommand(
        id=cid,
        time=1.0,
        host="h",
        vm=vm,
        target_vcpus=target,
        seen_vcpus=seen,
        decider="d",
        reason="r",
        expires_at=100.0,
    )


def result(
    cid: str,
    vm: str = "vm-01",
    before: int | None = 2,
    after: int | None = 3,
    ok: bool = True,
    code: ErrorCode | None = None,
) -> ScaleResult:
    return ScaleResult(
        command_id=cid,
        time=2.0,
        host="h",
        vm=vm,
        ok=ok,
        vcpus_before=before,
        vcpus_after=after,
        target_vcpus=3,
        duration_s=0.1,
        actuator="a",
        error_code=code,
    )


def sample(vm: str, online: int, lo: int = 1, hi: int = 4) -> MetricSample:
    return MetricSample(
        time=5.0,
        host="h",
        vm=vm,
        online_vcpus=online,
        min_vcpus=lo,
        max_vcpus=hi,
        cpu_used_cores=0.5,
        interval_s=1.0,
        source="t",
    )


def test_a_clean_run_is_clean() -> None:
    a = audit(
        [command("c1"), command("c2", seen=3, target=2)],
        [result("c1"), result("c2", before=3, after=2)],
        seen_live=["c1", "c2", "result-c1"],
        ops_by_vm={"vm-01": 2},
        bounds={"vm-01": (1, 4)},
        samples=[sample("vm-01", 2)],
    )
    assert a.clean
    assert (a.commands, a.results, a.lost, a.duplicated, a.out_of_bounds) == (2, 2, 0, 0, 0)


def test_a_command_without_result_and_an_event_missing_from_the_log_are_lost() -> None:
    a = audit([command("c1"), command("c2")], [result("c1")], seen_live=["c1", "c3", "result-c9"])
    assert a.lost == 3
    assert a.unanswered == ["c2"]
    assert a.missing_from_log == ["c3", "result-c9"]


def test_a_second_result_and_an_operation_no_result_explains_are_duplicates() -> None:
    a = audit([command("c1")], [result("c1"), result("c1")], ops_by_vm={"vm-01": 2})
    assert a.repeated_results == ["c1"]
    assert a.unaccounted_ops == {"vm-01": 1}  # 2 -> 3 asked once, the hypervisor moved twice
    assert a.duplicated == 2


def test_a_result_published_twice_counts_as_a_duplicate_though_the_log_kept_one() -> None:
    a = audit([command("c1")], [result("c1")], live_results=[result("c1"), result("c1", after=2)])
    assert (a.repeated_results, a.duplicated) == (["c1"], 1)
    retried = audit([command("c1")], [result("c1")], live_results=[result("c1"), result("c1")])
    assert retried.duplicated == 0  # one result, delivered again by a retried publish


def test_a_redelivered_command_that_finds_its_effect_done_accounts_for_it() -> None:
    # the actuator died after plugging; its successor saw 3 vCPUs and reported no change
    a = audit([command("c1")], [result("c1", before=3, after=3)], ops_by_vm={"vm-01": 1})
    assert a.duplicated == 0


def test_a_refused_command_accounts_for_no_operation() -> None:
    a = audit(
        [command("c1")], [result("c1", before=2, after=2, ok=False, code=ErrorCode.STALE_VIEW)], ops_by_vm={"vm-01": 1}
    )
    assert a.unaccounted_ops == {"vm-01": 1}


def test_counts_outside_the_bounds_of_the_actuator_or_the_vm() -> None:
    a = audit(
        [command("c1")],
        [result("c1", after=3)],
        bounds={"vm-01": (1, 2)},
        samples=[sample("vm-02", 5), sample("vm-02", 4), sample("vm-03", 0)],
    )
    assert a.out_of_bounds == 3
    assert not a.clean
