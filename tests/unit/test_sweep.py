"""Each policy's declared sweep (``SWEEP``) and the frontier read from it, on a small series."""

from __future__ import annotations

from typing import ClassVar

import msgspec
import pytest

from evaluation.frontier import cost_at
from evaluation.sweep import declared_sweep, frontier_report, policy_params, sweep
from services.decider.policies.threshold import ThresholdPolicy
from services.decider.registry import POLICIES, build_policy
from shared.errors import UsageError
from shared.traces import VmSeries

SERIES = [VmSeries("vm", [0.5, 3.5, 3.9, 0.2, 0.1, 2.4, 2.6, 0.3] * 6, 4, 300.0)]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_declares_a_sweep_of_its_own_parameter(name: str) -> None:
    key, values = declared_sweep(name)
    cls = POLICIES[name]
    assert key in cls.params_type.__struct_fields__
    assert len(values) >= 3 and list(values) == sorted(values)
    for value in values:  # each value is one the policy accepts
        policy, _ = build_policy(name, {name: {key: repr(value)}})
        assert msgspec.structs.asdict(policy.params)[key] == pytest.approx(value)


def test_a_policy_without_a_sweep_cannot_be_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unswept(ThresholdPolicy):
        name: ClassVar[str] = "unswept"

    monkeypatch.setattr(Unswept, "SWEEP", None)  # a plug-in policy that declares none
    monkeypatch.setitem(POLICIES, "unswept", Unswept)
    with pytest.raises(UsageError, match="declares no SWEEP"):
        sweep(SERIES, ["unswept"], {}, pressure=False, workers=1)


def test_the_frontier_report_runs_the_declared_values_and_reads_the_costs_from_them() -> None:
    report = frontier_report(SERIES, ["threshold"], {}, pressure=False, levels=[1.0, 50.0], workers=1)
    entry = report["policies"]["threshold"]  # type: ignore[index]
    key, values = declared_sweep("threshold")
    assert entry["parameter"] == f"threshold.{key}"
    assert [point["value"] for point in entry["sweep"]] == list(values)
    points = [(point["unmet_pct"], point["ratio_to_oracle"]) for point in entry["sweep"]]
    assert entry["cost_at"] == {"1": cost_at(points, 1.0), "50": cost_at(points, 50.0)}
    assert entry["lowest_unmet_pct"] == min(u for u, _ in points)


def test_a_sweep_may_name_its_own_values_for_a_policy() -> None:
    key, declared = declared_sweep("threshold")
    chosen = [declared[0], declared[-1]]
    points = sweep(SERIES, ["threshold", "fusd"], {}, pressure=False, workers=1, values={"threshold": chosen})
    assert [value for value, _ in points["threshold"]] == chosen
    assert [value for value, _ in points["fusd"]] == list(declared_sweep("fusd")[1])  # not named: as declared
    alone = sweep(SERIES, ["threshold"], {"threshold": {key: repr(chosen[1])}}, pressure=False, workers=1)
    assert points["threshold"][1][1] == next(s for v, s in alone["threshold"] if v == chosen[1])


def test_cost_at_mixes_two_settings_along_the_line_between_them() -> None:
    points = [(0.0, 2.0), (10.0, 1.0)]
    assert cost_at(points, 5.0) == pytest.approx(1.5)
    assert cost_at(points, 10.0) == pytest.approx(1.0)
    assert cost_at([(1.0, 1.2)], 0.5) is None  # below the lowest point's unmet: out of reach


def test_params_must_name_a_policy_of_the_run_or_the_guard() -> None:
    items = ["threshold.upper=0.9", "guard.up_cooldown_s=5"]
    assert policy_params(items, ["threshold"], "replayed") == {
        "threshold": {"upper": "0.9"},
        "guard": {"up_cooldown_s": "5"},
    }
    with pytest.raises(UsageError, match="--param names threshold, which is not among the benchmarked policies"):
        policy_params(items, ["hpa"], "benchmarked")
