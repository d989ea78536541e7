"""The mini-cloud model and its workloads: capacity, pressure, VirtualBox's hot-plug rules, reproducibility."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.simulator.cloud import HotplugRefused, MiniCloud, SimVm
from services.simulator.workloads import PROFILES, Workload
from shared.messages import ErrorCode


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
        v.check_hotplug("unplug", 0.0)
    assert info.value.code is ErrorCode.CPU0
    done = v.begin_hotplug("plug", 0.0, delay_s=0.5)
    with pytest.raises(HotplugRefused):
        v.check_hotplug("plug", 0.2)  # one operation at a time
    assert v.finish_hotplug("plug", done) == 2
    with pytest.raises(HotplugRefused) as info:
        v.check_hotplug("plug", 1.0)
    assert info.value.code is ErrorCode.CPU_ID_OUT_OF_RANGE


def test_unknown_vm_is_reported_as_virtualbox_would() -> None:
    cloud = MiniCloud.generate(2, seed=1, start=0.0)
    with pytest.raises(HotplugRefused) as info:
        cloud.get("nope")
    assert info.value.code is ErrorCode.VM_NOT_FOUND
    assert "Could not find a registered machine named 'nope'" in str(info.value)


@settings(max_examples=30, deadline=None)
@given(profile=st.sampled_from(sorted(PROFILES)), seed=st.integers(0, 2**31),
       times=st.lists(st.floats(0, 5000), min_size=1, max_size=30))
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
