"""The live memory tally: ratios, swap time, OOM kills counted once each, memory changes from results."""

from __future__ import annotations

import pytest

from evaluation.memory_tally import MEMORY_SCORE_KEYS, MemoryTally
from shared.messages import MemoryReading, MetricSample, Resource, ScaleResult

GIB = 1024**3


def sample(vm: str, size: int, used: int | None, swap: float | None = None, kills: int | None = None) -> MetricSample:
    return MetricSample(
        time=1.0,
        host="h",
        vm=vm,
        online_vcpus=1,
        min_vcpus=1,
        max_vcpus=2,
        cpu_used_cores=0.5,
        interval_s=10.0,
        source="t",
        memory=MemoryReading(
            size_bytes=size,
            min_bytes=GIB,
            max_bytes=8 * GIB,
            used_bytes=used,
            swap_in_bytes_per_s=swap,
            oom_kills=kills,
        ),
    )


def result(before: int, after: int, ok: bool = True) -> ScaleResult:
    return ScaleResult(
        command_id="c",
        time=1.0,
        host="h",
        vm="a",
        ok=ok,
        vcpus_before=None,
        vcpus_after=None,
        duration_s=1.0,
        actuator="act",
        resource=Resource.MEMORY,
        memory_before_bytes=before,
        memory_after_bytes=after,
    )


def test_scores_from_samples_and_results() -> None:
    tally = MemoryTally()
    tally.add_sample(sample("a", 4 * GIB, 2 * GIB, kills=0))
    tally.add_sample(sample("a", 4 * GIB, 2 * GIB, swap=1e6, kills=1))
    tally.add_sample(sample("a", 4 * GIB, 2 * GIB, kills=1))  # the same kill, seen again
    tally.add_sample(sample("b", 2 * GIB, None))  # use unknown: neither side of the ratio
    tally.add_result(result(4 * GIB, 3 * GIB))
    tally.add_result(result(3 * GIB, 3 * GIB))  # nothing moved
    scores = tally.scores()
    assert set(scores) == set(MEMORY_SCORE_KEYS)
    assert scores["memory_ratio_to_oracle"] == pytest.approx(2.0)
    assert scores["swap_pct"] == pytest.approx(25.0)
    assert scores["oom_kills"] == 1
    assert scores["memory_changes_per_vm_hour"] == pytest.approx(1 / (40 / 3600))
    assert scores["memory_given_back_gib"] == pytest.approx(1.0)


def test_vcpu_samples_and_results_add_nothing() -> None:
    tally = MemoryTally()
    cpu_only = MetricSample(
        time=1.0, host="h", vm="a", online_vcpus=1, min_vcpus=1, max_vcpus=2, cpu_used_cores=0.5, interval_s=1.0,
        source="t",
    )  # fmt: skip
    tally.add_sample(cpu_only)
    tally.add_result(
        ScaleResult(
            command_id="c",
            time=1.0,
            host="h",
            vm="a",
            ok=True,
            vcpus_before=1,
            vcpus_after=2,
            target_vcpus=2,
            duration_s=0.1,
            actuator="act",
        )
    )
    assert tally.vm_seconds == 0.0 and tally.changes == 0


def test_tallies_of_separate_runs_add_up_and_a_kill_counts_in_its_own_run() -> None:
    one, two = MemoryTally(), MemoryTally()
    one.add_sample(sample("a", 4 * GIB, 2 * GIB, swap=1e6, kills=1))
    two.add_sample(sample("a", 2 * GIB, 2 * GIB, kills=1))  # the same name in another run: another VM, another kill
    two.add_result(result(4 * GIB, 2 * GIB))
    one.add_tally(two)
    scores = one.scores()
    assert scores["memory_ratio_to_oracle"] == pytest.approx(1.5)
    assert scores["swap_pct"] == pytest.approx(50.0)
    assert scores["oom_kills"] == 2
    assert one.changes == 1 and scores["memory_given_back_gib"] == pytest.approx(2.0)
