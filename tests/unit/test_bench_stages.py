"""The loop benchmark's stages: each trial's seconds from a load step to its plug, and their percentiles."""

from __future__ import annotations

import pytest

from evaluation.bench.stages import STAGES, Trial, stage_table, stages_of
from shared.messages import ScaleCommand, ScaleResult


def trial(
    step: float, sampled: float | None, commanded: float, started: float, finished: float, arrived: float
) -> Trial:
    command = ScaleCommand(
        id="c-1",
        time=commanded,
        host="h",
        vm="vm-01",
        target_vcpus=2,
        seen_vcpus=1,
        decider="d",
        reason="load",
        expires_at=commanded + 30,
        sample_time=sampled,
    )
    result = ScaleResult(
        command_id="c-1",
        time=finished,
        host="h",
        vm="vm-01",
        ok=True,
        vcpus_before=1,
        vcpus_after=2,
        target_vcpus=2,
        duration_s=finished - started,
        actuator="a",
    )
    return Trial(step, command, result, arrived)


def test_each_stage_is_dated_by_the_message_that_ends_it() -> None:
    stages = stages_of(
        trial(step=100.0, sampled=100.6, commanded=100.61, started=100.63, finished=100.83, arrived=100.84)
    )
    assert stages["detect"] == pytest.approx(0.6)
    assert stages["decide"] == pytest.approx(0.01)
    assert stages["deliver"] == pytest.approx(0.02)
    assert stages["act"] == pytest.approx(0.2)
    assert stages["report"] == pytest.approx(0.01)
    assert stages["total"] == pytest.approx(0.84)


def test_the_stages_of_a_trial_add_up_to_its_total() -> None:
    stages = stages_of(trial(step=5.0, sampled=5.9, commanded=5.95, started=6.0, finished=6.4, arrived=6.5))
    assert sum(stages[s] for s in STAGES if s != "total") == pytest.approx(stages["total"])


def test_a_command_without_its_sample_time_counts_detection_up_to_the_command() -> None:
    stages = stages_of(trial(step=0.0, sampled=None, commanded=0.7, started=0.7, finished=0.8, arrived=0.8))
    assert stages["detect"] == pytest.approx(0.7)
    assert stages["decide"] == 0.0


def test_the_table_gives_the_median_and_the_95th_percentile_of_each_stage() -> None:
    trials = [trial(0.0, d, d, d, d + 0.1, d + 0.1) for d in (0.1, 0.2, 0.3, 0.4, 0.9)]
    table = stage_table(trials)
    assert set(table) == set(STAGES)
    assert table["detect"] == {"p50_s": 0.3, "p95_s": 0.9}
    assert table["act"]["p50_s"] == pytest.approx(0.1)
    assert table["total"] == {"p50_s": 0.4, "p95_s": 1.0}
