"""The mini-cloud model and its workloads: capacity, pressure, VirtualBox's hot-plug rules, reproducibility."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.simulator.cloud import HotplugRefused, MiniCloud, SimVm, load_trace
from services.simulator.workloads import PROFILES, TraceWorkload, Workload
from shared.messages import ErrorCode
from shared.traces import TraceError


def vm(online: int = 2, maximum: int = 4, demand: float | None = None) -> SimVm:
    v = SimVm(name="v", max_vcpus=maximum, online_vcpus=online, workload=Workload("idle", maximum, 1, 0.0))
    v.demand_override = demand
    return v


def test_a_vm_never_uses_more_than_it_has_and_the_rest_is_pressure() -> None:
    v = vm(online=2, demand=3.5)
    v.advance(10.0)
    assert v.cpu_seconds == pytest.approx(20.0)
    assert v.waiting_core_seconds == pytest.approx(15.0)
    assert sum(v.per_vcpu_seconds) == pytest.approx(20.0)
    assert v.per_vcpu_seconds[2:] == [0.0, 0.0]


def test_hotplug_follows_virtualbox_rules() -> None:
    v = vm(online=1, maximum=2)
    with pytest.raises(HotplugRefused) as info:
        v.check_resize(0)
    assert info.value.code is ErrorCode.CPU0
    done = v.begin_resize(2, 0.0, step_s=0.5)
    with pytest.raises(HotplugRefused):
        v.check_resize(1)  # one operation at a time
    assert not v.step(0.4)
    assert v.step(done) and v.online_vcpus == 2
    with pytest.raises(HotplugRefused) as info:
        v.check_resize(3)
    assert info.value.code is ErrorCode.CPU_ID_OUT_OF_RANGE


def test_each_vcpu_keeps_its_busy_seconds_across_unplug_and_plug() -> None:
    v = vm(online=2, maximum=4, demand=2.0)
    v.advance(10.0)  # 10 s on each of 2
    v.set_online(3)
    v.advance(16.0)  # 2 cores over 3 vCPUs for 6 s: 4 s each
    v.set_online(2)
    v.advance(20.0)  # 4 s on each of 2; the third keeps its 4 s
    assert v.per_vcpu_seconds == pytest.approx([18.0, 18.0, 4.0, 0.0])
    assert v.cpu_seconds == pytest.approx(sum(v.per_vcpu_seconds))
    assert v.hotplug_ops == 2


def test_unknown_vm_is_reported_as_virtualbox_would() -> None:
    cloud = MiniCloud.generate(2, seed=1, start=0.0)
    with pytest.raises(HotplugRefused) as info:
        cloud.get("nope")
    assert info.value.code is ErrorCode.VM_NOT_FOUND
    assert "Could not find a registered machine named 'nope'" in str(info.value)


@settings(max_examples=30, deadline=None)
@given(
    profile=st.sampled_from(sorted(PROFILES)),
    seed=st.integers(0, 2**31),
    times=st.lists(st.floats(0, 5000), min_size=1, max_size=30),
)
def test_same_seed_gives_same_demand_however_it_is_asked(profile: str, seed: int, times: list[float]) -> None:
    times = sorted(times)
    dense = Workload(profile, 8, seed, 0.0)
    for step in range(0, int(times[-1]) + 1, 7):
        dense.demand(float(step))  # ask often on one copy, rarely on the other
    sparse = Workload(profile, 8, seed, 0.0)
    fresh = Workload(profile, 8, seed, 0.0)
    for t in times:
        d = fresh.demand(t)
        assert 0.0 <= d <= 8.0
        assert sparse.demand(t) == d
    assert dense.demand(times[-1] + 7) == sparse.demand(times[-1] + 7)


def test_generated_fleet_mixes_profiles_and_boots_below_its_maximum() -> None:
    cloud = MiniCloud.generate(8, seed=3, start=0.0)
    profiles = {v.workload.profile for v in cloud.vms.values()}
    assert profiles == {"training", "inference", "notebook", "batch"}
    assert all(v.online_vcpus < v.max_vcpus for v in cloud.vms.values())
    with pytest.raises(ValueError, match="unknown workload profile"):
        MiniCloud.generate(1, seed=1, start=0.0, profiles=["nope"])


def write_trace(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_a_trace_holds_each_value_until_the_next_and_repeats_after_its_end(tmp_path: Path) -> None:
    # irregular steps (10 s, then 50 s); the file starts at 0, the run at 1000
    path = write_trace(tmp_path, "time_s,vm,demand_vcpus,max_vcpus\n0,web,0.5,4\n10,web,3.5,4\n60,web,1.0,4\n")
    cloud = MiniCloud.from_trace(load_trace(path), start=1000.0)
    web = cloud.get("web")
    assert (web.max_vcpus, web.online_vcpus, web.workload.profile) == (4, 4, "trace")
    assert [web.demand(1000.0 + t) for t in (0, 9.9, 10, 59.9, 60)] == [0.5, 0.5, 3.5, 3.5, 1.0]
    # the last value lasts one step (the loader's median step, 50 s), then the trace starts over every 110 s
    assert web.demand(1109.9) == 1.0
    assert [web.demand(1110.0 + t) for t in (0, 10, 60)] == [0.5, 3.5, 1.0]
    assert web.demand(1000.0 + 110 * 1000 + 15) == 3.5
    assert web.demand(990.0) == 0.5  # before the run's start: the first value


def test_a_trace_without_sizes_uses_the_replay_loaders_and_its_vms_stay_in_step(tmp_path: Path) -> None:
    # POSIX timestamps: the file's earliest time plays at the run's start; vm b starts 300 s into the file
    path = write_trace(
        tmp_path, "time_s,vm,demand_vcpus\n1700000000,a,2.5\n1700000300,a,0.5\n1700000300,b,1\n1700000600,b,6\n"
    )
    cloud = MiniCloud.from_trace(load_trace(path), start=0.0)
    a, b = cloud.get("a"), cloud.get("b")
    assert (a.max_vcpus, b.max_vcpus) == (3, 6)  # ceil of the largest demand, as replay sizes them
    assert (a.demand(0.0), b.demand(0.0), b.demand(300.0), b.demand(600.0)) == (2.5, 1.0, 1.0, 6.0)
    assert a.demand(600.0) == 0.5
    # one period for the whole file (600 s + b's 300-s step), so a and b repeat together
    assert (a.demand(900.0), b.demand(900.0), b.demand(1500.0)) == (2.5, 1.0, 6.0)


def test_a_trace_vm_never_uses_more_than_it_has() -> None:
    workload = TraceWorkload([0.0, 5.0], [3.0, 1.0], origin=0.0, period=10.0, start=0.0)
    v = SimVm(name="t", max_vcpus=4, online_vcpus=2, workload=workload)
    v.advance(10.0)
    assert v.cpu_seconds == pytest.approx(2 * 5 + 1 * 5)
    assert v.waiting_core_seconds == pytest.approx(1 * 5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,vm,demand\n0,a,1\n", "header must name"),
        ("time_s,vm,demand_vcpus\n", "no rows"),
        ("time_s,vm,demand_vcpus\n0,a,lots\n", r"trace.csv:2: could not convert"),
        ("time_s,vm,demand_vcpus,max_vcpus\n0,a,1,2000\n", "max_vcpus 2000; it must be 1 to 1024"),
    ],
)
def test_bad_trace_files_raise_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message) as info:
        load_trace(write_trace(tmp_path, text))
    assert "\n" not in str(info.value)


def test_a_missing_trace_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file"):
        load_trace(tmp_path / "nope.csv")
