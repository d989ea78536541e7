"""The simulated host: cores shared as a fair scheduler shares them, jobs started first come first served within
the capacity, work slowed by starvation, lifetimes kept, the hypervisor's host-full refusal, and the same arrivals
with fixed sizes."""

from __future__ import annotations

import pytest

from services.simulator.cloud import HotplugRefused, MiniCloud, SimVm
from services.simulator.host import Host, fixed_sizes
from services.simulator.jobs import Job, arrivals_until, poisson_arrivals
from services.simulator.workloads import Workload
from shared.messages import ErrorCode
from shared.sim_api import SimJob


def pinned(name: str, online: int, demand: float, maximum: int | None = None) -> SimVm:
    """A VM whose demand is pinned (as ``hotplug load`` pins it)."""
    top = maximum or online
    vm = SimVm(name=name, max_vcpus=top, online_vcpus=online, workload=Workload("idle", top, 1, 0.0))
    vm.demand_override = demand
    return vm


def job(name: str, requested: int, arrival: float, *, lifetime: float | None = None, work: float | None = None) -> Job:
    return Job(name, requested, 2 * requested, "idle", arrival, lifetime_s=lifetime, work_s=work)


def record(host: Host, name: str) -> SimJob:
    return next(j for j in host.jobs() if j.name == name)


def test_an_oversubscribed_host_gives_each_vm_its_proportional_share_and_counts_the_rest_as_host_wait() -> None:
    # 6 vCPUs want to run on 3 cores; b also wants 1 core above its own vCPUs (its own pressure, not host wait)
    a, b = pinned("a", 4, 4.0), pinned("b", 2, 3.0)
    host = Host(3, 6, resident=[a, b])
    host.advance(10.0)
    assert (a.cpu_seconds, b.cpu_seconds) == pytest.approx((20.0, 10.0))  # 4 × 3/6, 2 × 3/6
    assert (a.host_wait_core_seconds, b.host_wait_core_seconds) == pytest.approx((20.0, 10.0))
    assert (a.waiting_core_seconds, b.waiting_core_seconds) == pytest.approx((0.0, 10.0))
    state = host.state()
    assert state.host_wait_core_seconds == pytest.approx(30.0)
    assert state.used_core_seconds == pytest.approx(30.0)
    assert state.used_cores == pytest.approx(3.0)


def test_an_undersubscribed_host_lets_every_vm_run_what_it_wants_within_its_vcpus() -> None:
    a, b = pinned("a", 4, 2.5), pinned("b", 2, 3.0)
    host = Host(8, 8, resident=[a, b])
    host.advance(10.0)
    assert (a.cpu_seconds, b.cpu_seconds) == pytest.approx((25.0, 20.0))
    assert host.state().host_wait_core_seconds == 0.0
    assert a.host_wait_core_seconds == b.host_wait_core_seconds == 0.0
    assert b.waiting_core_seconds == pytest.approx(10.0)  # its own pressure: 1 core above its 2 vCPUs


def test_jobs_start_first_come_first_served_when_the_capacity_allows_and_the_head_blocks_the_queue() -> None:
    jobs = [
        job("a", 2, 0.0, lifetime=100.0),  # 4 + 2 = 6 of 8: starts at once
        job("b", 4, 10.0, lifetime=50.0),  # 6 + 4 > 8: waits for a
        job("c", 2, 20.0, lifetime=50.0),  # would fit (6 + 2), but waits behind b
    ]
    host = Host(8, 8, jobs=jobs, resident=[pinned("r", 4, 1.0)])
    host.advance(99.0)
    assert [j.name for j in host.waiting] == ["b", "c"]
    assert host.state().waiting_vcpus == 6 and host.state().next_waiting_vcpus == 4
    assert record(host, "c").start_s is None
    host.advance(100.0)  # a ends: b starts (4 + 4 = 8), c still waits
    assert record(host, "a").end_s == pytest.approx(100.0)
    assert record(host, "b").start_s == pytest.approx(100.0)
    assert [j.name for j in host.waiting] == ["c"]
    host.advance(200.0)
    assert record(host, "c").start_s == pytest.approx(150.0)  # when b ended
    assert record(host, "c").wait_s == pytest.approx(130.0)
    assert host.committed_vcpus == 4  # c ended at 200 too, and left the host
    assert [vm.name for vm in host.vms] == ["r"]
    assert (host.jobs_started, host.jobs_finished) == (3, 3)


def test_a_job_larger_than_the_whole_capacity_is_rejected_and_does_not_block_the_queue() -> None:
    host = Host(4, 4, jobs=[job("huge", 8, 0.0, lifetime=10.0), job("small", 2, 1.0, lifetime=10.0)])
    host.advance(5.0)
    assert record(host, "huge").rejected and record(host, "huge").start_s is None
    assert record(host, "small").start_s == pytest.approx(1.0)
    assert host.state().jobs_rejected == 1


def test_a_work_job_fully_served_takes_its_work_and_starved_takes_longer() -> None:
    served = Host(8, 8, jobs=[Job("w", 2, 2, "idle", 0.0, work_s=600.0)])
    served.advance(1000.0)
    done = record(served, "w")
    assert done.end_s == pytest.approx(600.0) and done.slowdown == pytest.approx(1.0)
    assert served.vms == []  # a finished VM leaves the host
    # 8 + 4 runnable vCPUs on 4 cores: the job runs a third of what it wants, a third as fast
    starved = Host(4, 12, jobs=[Job("w", 4, 4, "idle", 0.0, work_s=600.0)], resident=[pinned("hog", 8, 8.0)])
    starved.vm("w").demand_override = 4.0
    starved.advance(1000.0)
    assert record(starved, "w").work_done_s == pytest.approx(1000.0 / 3)
    starved.advance(2000.0)
    assert record(starved, "w").slowdown == pytest.approx(3.0)


def test_a_job_that_wants_more_than_its_vcpus_is_slowed_and_a_grow_speeds_it_up() -> None:
    host = Host(8, 8, jobs=[Job("w", 2, 4, "idle", 0.0, work_s=300.0)])
    host.vm("w").demand_override = 4.0
    host.advance(100.0)  # 2 of the 4 cores it wants: half speed, 50 s of work
    assert record(host, "w").work_done_s == pytest.approx(50.0)
    host.begin_resize("w", 4, 100.0, step_s=0.0)
    host.advance(400.0)
    assert record(host, "w").end_s == pytest.approx(350.0)  # the other 250 s at full speed
    assert record(host, "w").slowdown == pytest.approx(350.0 / 300.0)


def test_a_lifetime_job_ends_on_time_however_starved() -> None:
    host = Host(2, 6, jobs=[job("svc", 2, 5.0, lifetime=60.0)], resident=[pinned("hog", 4, 4.0)])
    host.vm("hog")  # running from the start
    host.advance(64.9)
    assert "svc" in [vm.name for vm in host.vms]
    host.advance(1000.0)
    done = record(host, "svc")
    assert (done.start_s, done.end_s) == pytest.approx((5.0, 65.0))
    assert [c.vm for c in host.counters()] == ["hog"]


def test_the_hypervisor_refuses_a_plug_the_capacity_cannot_take_counting_plugs_under_way() -> None:
    a, b = pinned("a", 3, 1.0, maximum=8), pinned("b", 2, 1.0, maximum=8)
    host = Host(8, 6, resident=[a, b])
    done = host.begin_hotplug("a", "plug", 0.0, delay_s=1.0)  # 5 + 1 plugging = 6 of 6
    assert host.committed_vcpus == 6 and a.online_vcpus == 3
    with pytest.raises(HotplugRefused) as info:
        host.begin_hotplug("b", "plug", 0.5, delay_s=1.0)
    assert info.value.code is ErrorCode.HOST_FULL
    assert "committed 6 of its 6 vCPUs" in str(info.value)
    assert host.finish_resize(a, done) == 4
    with pytest.raises(HotplugRefused) as info:
        host.begin_resize("b", 3, 2.0, step_s=1.0)
    assert info.value.code is ErrorCode.HOST_FULL
    host.finish_resize(b, host.begin_hotplug("b", "unplug", 2.0, delay_s=1.0))  # a shrink always passes
    assert (b.online_vcpus, host.committed_vcpus) == (1, 5)
    with pytest.raises(HotplugRefused) as info:
        host.begin_hotplug("b", "unplug", 4.0, delay_s=1.0)
    assert info.value.code is ErrorCode.CPU0  # VirtualBox's own rules still hold
    with pytest.raises(HotplugRefused) as info:
        host.begin_hotplug("ghost", "plug", 4.0, delay_s=1.0)
    assert info.value.code is ErrorCode.VM_NOT_FOUND


def test_a_queued_job_starts_once_an_unplug_completes_and_frees_room() -> None:
    big = pinned("big", 8, 0.5)
    host = Host(10, 10, jobs=[job("j", 4, 0.0, lifetime=600.0)], resident=[big])
    host.advance(10.0)
    assert [j.name for j in host.waiting] == ["j"]
    host.begin_resize("big", 6, 10.0, step_s=2.0)  # two vCPUs, one every 2 s
    host.advance(13.9)
    assert record(host, "j").start_s is None  # one of two unplugged: 7 + 4 > 10
    host.advance(20.0)
    assert record(host, "j").start_s == pytest.approx(14.0)


def test_a_vm_that_leaves_during_a_plug_answers_not_running() -> None:
    host = Host(8, 8, jobs=[job("j", 2, 0.0, lifetime=10.0)])
    vm = host.vm("j")
    done = host.begin_hotplug("j", "plug", 9.0, delay_s=5.0)
    with pytest.raises(HotplugRefused) as info:
        host.finish_resize(vm, done)
    assert info.value.code is ErrorCode.VM_NOT_RUNNING
    assert host.committed_vcpus == 0


def test_fixed_sizes_never_resizes_and_is_the_same_for_the_same_arrivals() -> None:
    jobs = arrivals_until(poisson_arrivals(8.0, seed=4), 7200.0)

    def run() -> list[SimJob]:
        resident = list(MiniCloud.generate(2, seed=1, start=0.0).vms.values())
        return fixed_sizes(jobs, cores=16, capacity_vcpus=16, span_s=7200.0, resident=resident, max_step_s=1.0).jobs

    first = run()
    assert first == run()
    assert [j.name for j in first] == [j.name for j in jobs]
    assert any(j.start_s is not None and j.wait_s and j.wait_s > 0 for j in first)  # the host was full at times
    started = [j for j in first if j.start_s is not None]
    assert started and all(j.work_done_s <= (j.work_s or 0.0) for j in started)


def test_shrinking_an_idle_vm_lets_a_job_in_that_waits_for_ever_with_fixed_sizes() -> None:
    jobs = [job("j", 4, 60.0, lifetime=600.0)]
    fixed = fixed_sizes(jobs, cores=10, capacity_vcpus=10, span_s=3600.0, resident=[pinned("idle", 8, 0.1)])
    assert fixed.jobs[0].start_s is None and fixed.host.waiting_vms == 1
    live = Host(10, 10, jobs=jobs, resident=[pinned("idle", 8, 0.1)])
    live.begin_resize("idle", 2, 30.0, step_s=0.0)
    live.advance(3600.0)
    assert live.jobs()[0].wait_s == pytest.approx(0.0)
    assert live.jobs()[0].end_s == pytest.approx(660.0)
