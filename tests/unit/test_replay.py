"""Trace replay: loaders, the scores, and properties every policy must keep (hypothesis)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluation.replay import _observation, replay_fleet, replay_series, score_oracle, score_policy
from evaluation.tally import Tally, oracle_allocation
from services.decider.policies.base import Observation
from services.decider.registry import POLICIES, build_policy
from shared.traces import TraceError, VmSeries, load

series_strategy = st.builds(
    lambda demand, size, low: VmSeries("vm", demand, size, 300.0, min(low, size)),
    st.lists(st.floats(0, 40, allow_nan=False), min_size=1, max_size=120),
    st.integers(1, 16),
    st.integers(1, 4),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series=series_strategy, name=st.sampled_from(sorted(POLICIES)), pressure=st.booleans())
def test_no_policy_ever_leaves_its_bounds(series: VmSeries, name: str, pressure: bool) -> None:
    policy, rails = build_policy(name)
    allocations = replay_series(series, policy, rails, pressure)
    assert len(allocations) == len(series.demand)
    assert all(series.min_vcpus <= a <= series.max_vcpus for a in allocations), allocations


@settings(max_examples=60, deadline=None)
@given(series=series_strategy)
def test_the_oracle_leaves_no_demand_unmet(series: VmSeries) -> None:
    scores = score_oracle([series])
    assert scores["unmet_pct"] == 0.0
    assert scores["underprovisioned_pct"] == 0.0
    assert scores["ratio_to_oracle"] == pytest.approx(1.0) or scores["alloc_core_hours"] == 0


@settings(max_examples=30, deadline=None)
@given(series=st.lists(series_strategy, min_size=1, max_size=4), name=st.sampled_from(sorted(POLICIES)))
def test_same_inputs_give_the_same_result(series: list[VmSeries], name: str) -> None:
    first = score_policy(series, *build_policy(name), pressure=False)
    second = score_policy(series, *build_policy(name), pressure=False)
    assert first == second


def test_scores_by_hand() -> None:
    # demand 0.5, 3, 1 on a 4-vCPU VM held at 2, 2, 4 vCPUs
    s = VmSeries("v", [0.5, 3.0, 1.0], 4, 3600.0)
    tally = Tally()
    tally.add(s, [2, 2, 4])
    scores = tally.scores()
    assert scores["alloc_core_hours"] == pytest.approx(8)
    assert scores["oracle_core_hours"] == pytest.approx(1 + 3 + 1)
    assert scores["slack_pct"] == pytest.approx(100 * (8 - 3.5) / 8)
    assert scores["unmet_pct"] == pytest.approx(100 * 1 / 4.5)
    assert scores["underprovisioned_pct"] == pytest.approx(100 / 3)
    assert scores["actions_per_vm_day"] == pytest.approx(1 / (3 / 24))
    assert oracle_allocation(0.0, 1, 4) == 1
    assert oracle_allocation(9.0, 1, 4) == 4


@settings(max_examples=80, deadline=None)
@given(series=series_strategy, data=st.data())
def test_a_whole_series_tallies_as_its_steps_one_by_one(series: VmSeries, data: st.DataObject) -> None:
    """``add`` takes a series at once (a sweep's speed); each sum is that of its steps taken one at a time, and an
    action is a step whose size differs from the one before."""
    sizes = st.integers(series.min_vcpus, series.max_vcpus)
    allocations = data.draw(st.lists(sizes, min_size=len(series.demand), max_size=len(series.demand)))
    whole, steps = Tally(), Tally()
    whole.add(series, allocations)
    for wanted, a in zip(series.demand, allocations, strict=True):
        steps.add(VmSeries(series.name, [wanted], series.max_vcpus, series.step_s, series.min_vcpus), [a])
    for field in ("alloc_core_s", "oracle_core_s", "served_core_s", "demand_core_s", "unmet_core_s"):
        assert getattr(whole, field) == pytest.approx(getattr(steps, field), rel=1e-9, abs=1e-6), field
    assert (whole.under_steps, whole.steps, whole.vm_seconds) == (steps.under_steps, steps.steps, steps.vm_seconds)
    assert whole.actions == sum(1 for a, b in pairwise(allocations) if a != b)


def test_a_tally_refuses_allocations_that_do_not_match_the_steps() -> None:
    with pytest.raises(ValueError, match="2 allocations for 3 steps"):
        Tally().add(VmSeries("v", [0.5, 3.0, 1.0], 4, 300.0), [2, 2])


def test_policy_sees_only_what_ran_and_pressure_only_when_asked() -> None:
    seen: list[tuple[float, float | None]] = []

    class Spy:
        name = "spy"

        def new_state(self) -> None:
            return None

        def harm_steer(self) -> None:
            return None

        def recommend(self, state: None, obs: Any) -> Any:
            seen.append((obs.used_cores, obs.pressure_cores))
            from services.decider.policies.base import Recommendation

            return Recommendation(obs.vcpus, "")

    rails = build_policy("threshold")[1]
    s = VmSeries("v", [1.0, 6.0], 4, 300.0)
    replay_series(s, Spy(), rails, pressure=False)  # type: ignore[arg-type]
    replay_series(s, Spy(), rails, pressure=True)  # type: ignore[arg-type]
    assert seen == [(1.0, None), (4.0, None), (1.0, 0.0), (4.0, 0.0)]  # demand is capped at the VM's size


def test_loaders(tmp_path: Path) -> None:
    (tmp_path / "pl").mkdir()
    (tmp_path / "pl" / "node_slice").write_text("10\n50\n100\n")
    [pl] = load([tmp_path / "pl"], "planetlab", vm_size=4)
    assert pl.demand == [0.4, 2.0, 4.0]
    assert pl.max_vcpus == 4
    with pytest.raises(TraceError, match="vm-size"):
        load([tmp_path / "pl"], "planetlab")

    bb = tmp_path / "7.csv"
    bb.write_text(
        "Timestamp [ms];\tCPU cores;\tCPU capacity provisioned [MHZ];\tCPU usage [MHZ];\tCPU usage [%]\n"
        "1;\t0;\t0.0;\t0.0;\t0.0\n"
        "301;\t4;\t10000.0;\t5000.0;\t50.0\n"
        "601;\t4;\t10000.0;\t10600.0;\t106.0\n"
    )
    [b] = load([bb], "bitbrains")
    assert b.demand == pytest.approx([2.0, 4.24])  # the 0-core row means the VM was not there
    assert (b.name, b.max_vcpus) == ("7", 4)

    c = tmp_path / "t.csv"
    c.write_text("time_s,vm,demand_vcpus,max_vcpus\n0,a,1.5,8\n60,a,2.5,8\n0,b,0.2,\n60,b,3.2,\n")
    by_name = {s.name: s for s in load([c], "csv")}
    assert by_name["a"].demand == [1.5, 2.5]
    assert by_name["a"].max_vcpus == 8
    assert by_name["a"].step_s == 60
    assert by_name["b"].max_vcpus == 4  # no max given: the peak demand, rounded up
    c.write_text("when,vm,demand\n")
    with pytest.raises(TraceError, match="header"):
        load([c], "csv")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    demand=st.lists(st.floats(0, 40, allow_nan=False), min_size=1, max_size=60),
    size=st.integers(1, 16),
    low=st.integers(1, 4),
    pressure=st.booleans(),
)
def test_a_fleet_replay_shows_each_step_as_the_plain_observation(
    demand: list[float], size: int, low: int, pressure: bool
) -> None:
    """The fleet loop builds each step's observation itself (a speed shortcut): it is ``_observation``'s, field by
    field, at the vCPUs the VM had and the period's price factor."""
    seen: list[Observation] = []
    policy, rails = build_policy("default")
    recommend = policy.recommend

    def spy(state: Any, obs: Observation) -> Any:
        seen.append(obs)
        return recommend(state, obs)

    policy.recommend = spy  # type: ignore[method-assign]
    # Two VMs (told apart by their sizes) over more than one of the steer's periods.
    series = [VmSeries("a", demand, size, 300.0, min(low, size)), VmSeries("b", demand[::-1] * 2, 17, 300.0, 2)]
    fleet = replay_fleet(series, policy, rails, pressure)
    by_step = {(o.max_vcpus, o.time): o for o in seen}
    assert len(by_step) == len(seen) == sum(len(s.demand) for s in series)
    for s, allocations in zip(series, fleet, strict=True):
        for i, vcpus in enumerate(allocations):
            obs = by_step[s.max_vcpus, i * s.step_s]
            assert obs == _observation(s, i, vcpus, pressure, obs.price_factor)
