"""Jobs that arrive at the simulated host: a seeded Poisson process that gives the same jobs for the same seed, and
a CSV file read in arrival order, whose mistakes are refused in one line naming the file and the line."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from services.simulator.jobs import COLUMNS, KINDS, ArrivalsError, Job, arrivals_until, load_arrivals, poisson_arrivals

HEADER = ",".join(COLUMNS) + "\n"


def test_the_same_seed_gives_the_same_arrivals_and_another_seed_others() -> None:
    first = list(itertools.islice(poisson_arrivals(10.0, seed=7), 200))
    assert first == list(itertools.islice(poisson_arrivals(10.0, seed=7), 200))
    assert first != list(itertools.islice(poisson_arrivals(10.0, seed=8), 200))
    assert [j.name for j in first[:2]] == ["job-0001", "job-0002"]
    assert len({j.seed for j in first}) == len(first)  # each job its own workload


def test_arrivals_follow_the_rate_and_the_mix() -> None:
    jobs = arrivals_until(poisson_arrivals(20.0, seed=3), 500 * 3600.0)
    assert 9_500 < len(jobs) < 10_500  # 20 an hour for 500 hours
    assert all(a.arrival_s < b.arrival_s for a, b in itertools.pairwise(jobs))
    assert {j.requested_vcpus for j in jobs} == {2, 4, 8}
    assert all(j.max_vcpus == j.requested_vcpus for j in jobs)
    ends = {profile: kind for profile, _, kind, _, _ in KINDS}
    for j in jobs:
        assert (j.work_s is not None) == (ends[j.profile] == "work")
        assert (j.lifetime_s is not None) == (ends[j.profile] == "lifetime")
    assert min(j.work_s for j in jobs if j.work_s is not None) >= 600
    assert max(j.lifetime_s for j in jobs if j.lifetime_s is not None) <= 7200
    assert list(poisson_arrivals(0.0, seed=1)) == []


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "arrivals.csv"
    path.write_text(text)
    return path


def test_a_file_is_read_in_arrival_order(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "30,late,4,8,batch,,1200\n0,early,2,4,notebook,3600,\n\n30,tie,1,1,idle,60,\n")
    jobs = load_arrivals(path, seed=1)
    assert [j.name for j in jobs] == ["early", "late", "tie"]
    assert jobs[0] == Job("early", 2, 4, "notebook", 0.0, lifetime_s=3600.0, seed=jobs[0].seed)
    assert (jobs[1].work_s, jobs[1].lifetime_s) == (1200.0, None)
    assert load_arrivals(path, seed=1) == jobs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("arrival,name\n0,a\n", ":1: the header must be arrival_s,name,requested_vcpus"),
        (HEADER, "no jobs"),
        (HEADER + "0,a,2,4,batch,,600,9\n", ":2: expected 7 columns"),
        (HEADER + "0,a,2,4,batch,60,600\n", ":2: give exactly one of lifetime_s and work_s"),
        (HEADER + "0,a,2,4,batch,,\n", ":2: give exactly one of lifetime_s and work_s"),
        (HEADER + "0,a,2,4,mining,,600\n", ":2: unknown profile 'mining'"),
        (HEADER + "0,a,8,4,batch,,600\n", ":2: requested_vcpus 8 is above max_vcpus 4"),
        (HEADER + "0,a,0,4,batch,,600\n", ":2: requested_vcpus must be 1 to 1024"),
        (HEADER + "0,a,two,4,batch,,600\n", ":2: requested_vcpus 'two' is not a whole number"),
        (HEADER + "soon,a,2,4,batch,,600\n", ":2: arrival_s 'soon' is not a number"),
        (HEADER + "-5,a,2,4,batch,,600\n", ":2: arrival_s must be at least 0"),
        (HEADER + "0,a,2,4,batch,,0\n", ":2: work_s must be positive"),
        (HEADER + "0,a,2,4,batch,,inf\n", ":2: work_s must be positive"),
        (HEADER + "0,,2,4,batch,,600\n", ":2: name '' is empty"),
        (HEADER + "0,a,2,4,batch,,600\n5,a,2,4,batch,,600\n", ":3: job name 'a' is used twice"),
    ],
)
def test_a_bad_file_is_refused_in_one_line_naming_its_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ArrivalsError) as info:
        load_arrivals(write(tmp_path, text))
    assert message in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "arrivals.csv"))
    assert "\n" not in str(info.value)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ArrivalsError, match="cannot read the arrivals file"):
        load_arrivals(tmp_path / "nope.csv")
