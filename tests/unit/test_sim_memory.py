"""The simulator's memory: demand per workload profile (seeded, each profile's shape), the guest's rules (page cache
given up, swap and its stall, the OOM killer counted once per kill), virtio-mem's timing, and the host around them
(a shrunk job swaps slower or starts its work again; CPU figures of a run that moves no memory are unchanged)."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from hotplug.waits import job_waits
from services.collector.rates import sample_from
from services.collector.sources.base import Reading
from services.collector.sources.simulator import memory_counters
from services.simulator.cloud import HotplugRefused, MiniCloud, SimVm
from services.simulator.host import Host
from services.simulator.jobs import Job
from services.simulator.memory import ANON_PEAK_SHARE, PROFILES, MemoryCurve, memory_level
from services.simulator.vm_memory import (
    BOOT_RAM_BYTES,
    MEMORY_STEP_BYTES,
    OOM_RESTART_S,
    SWAP_BYTES,
    SWAP_READ_BYTES_PER_S,
    SWAP_TOUCH_PER_S,
    VmMemory,
    kernel_bytes,
    move_time,
    size_during,
)
from services.simulator.workloads import Workload
from shared.messages import ErrorCode
from shared.sim_api import SimHost, SimJob, SimMemory, SimVmCounters, StatsReply
from shared.units import GIB, MIB

HOUR = 3600.0


def levels(profile: str, seed: int, times: list[float]) -> list[tuple[float, float]]:
    workload = Workload(profile, 4, seed, 0.0)
    return [tuple(memory_level(workload, t)) for t in times]  # type: ignore[misc]


def phases(profile: str, seed: int, until: float) -> list[tuple[int, str, float, float]]:
    """The workload's phases up to ``until``: (number, label, start, end)."""
    workload = Workload(profile, 4, seed, 0.0)
    out = []
    t = 0.0
    while t < until:
        phase = workload.phase(t)
        out.append(tuple(phase))
        t = phase.end
    return out  # type: ignore[return-value]


# --- demand -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_same_seed_gives_the_same_memory_at_the_same_time_however_it_is_asked(profile: str) -> None:
    times = [i * 0.7 for i in range(3000)]
    assert levels(profile, 5, times) == levels(profile, 5, times)
    # asked sparsely (a reading now and then) or densely (the host's steps): the same figures at the same times
    sparse = levels(profile, 5, times[::97])
    assert sparse == levels(profile, 5, times)[::97]
    # the per-VM curve the host uses gives what the pure function gives
    curve = MemoryCurve(Workload(profile, 4, 5, 0.0), 4 * GIB)
    assert [curve.at(t) for t in times[::13]] == [
        (int(a * 4 * GIB), int(c * 4 * GIB)) for a, c in levels(profile, 5, times)[::13]
    ]
    if profile != "idle":
        assert levels(profile, 6, times) != levels(profile, 5, times)


def test_memory_does_not_touch_the_cpu_demand() -> None:
    plain, asked = Workload("training", 4, 3, 0.0), Workload("training", 4, 3, 0.0)
    curve = MemoryCurve(asked, GIB)
    for i in range(5000):
        t = i * 0.25
        curve.at(t)
        assert asked.demand(t) == plain.demand(t)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_no_profile_passes_its_peak_share_so_a_vm_at_its_requested_size_never_swaps(profile: str) -> None:
    for seed in range(12):
        # each phase's figures move linearly and then hold: their extremes are at its start and its end
        edges = [t for _, _, start, end in phases(profile, seed, 6 * HOUR) for t in (start, end - 1e-6)]
        for anon, cache in levels(profile, seed, edges):
            assert 0.0 <= anon <= ANON_PEAK_SHARE
            assert 0.0 <= cache <= 0.5
    # the smallest VM the built-ins make has room for that peak beside its kernel
    smallest = BOOT_RAM_BYTES
    assert smallest - kernel_bytes(smallest) >= ANON_PEAK_SHARE * smallest


def test_training_loads_at_start_grows_through_each_epoch_and_drops_a_little_at_evaluation() -> None:
    seed = 2
    listed = phases("training", seed, 2 * HOUR)
    first = listed[0]
    assert first[1] == "data-loading"
    start, end = levels("training", seed, [first[2], first[3] - 1e-6])
    assert start[0] < 0.1 < end[0]  # model and dataset come in
    assert start[1] == 0.0 and end[1] > 0.05  # and the dataset's files fill the page cache
    epochs = [p for p in listed if p[1] == "epoch"]
    assert len(epochs) >= 5
    for number, _, begin, finish in epochs[:-1]:  # the last one's evaluation may lie past the listed phases
        at = levels("training", seed, [begin, (begin + finish) / 2, finish - 1e-6])
        assert at[0][0] < at[1][0] < at[2][0]  # rises through the epoch
        assert at[2][0] - at[0][0] > 0.1
        evaluation = next(p for p in listed if p[0] == number + 1)
        assert evaluation[1] == "evaluation"
        during = levels("training", seed, [evaluation[2] + 1])[0][0]
        assert during == pytest.approx(at[2][0] - 0.05, abs=1e-3)  # a little below the epoch's peak


def test_notebook_idles_low_and_spikes_when_a_cell_loads_a_dataframe() -> None:
    seed = 4
    listed = phases("notebook", seed, 3 * HOUR)
    idle = [levels("notebook", seed, [(p[2] + p[3]) / 2])[0][0] for p in listed if p[1] == "idle"]
    cells = [(p, levels("notebook", seed, [p[2], p[3] - 1e-6])) for p in listed if p[1] == "cell"]
    assert max(idle) < 0.3
    interpreter = idle[0]  # before any cell ran
    for (number, _, _, _), (before, loaded) in cells[:-1]:
        assert loaded[0] - before[0] >= 0.15  # the dataframe
        after = levels("notebook", seed, [next(p for p in listed if p[0] == number + 1)[2] + 1])[0]
        assert interpreter < after[0] < loaded[0]  # a quarter of it stays
        assert after[1] == pytest.approx(0.5 * (loaded[0] - before[0]))  # and the file it read, in the cache


def test_inference_holds_its_model_and_adds_a_kv_cache_per_burst() -> None:
    seed = 1
    listed = phases("inference", seed, 2 * HOUR)
    serving = {levels("inference", seed, [(p[2] + p[3]) / 2])[0][0] for p in listed if p[1] == "serving"}
    assert len(serving) == 1  # the model, steady
    model = serving.pop()
    for p in (p for p in listed if p[1] == "burst"):
        assert levels("inference", seed, [p[2] + 2.5])[0][0] > model + 0.09


def test_batch_rises_holds_and_ends() -> None:
    seed = 3
    listed = phases("batch", seed, 2 * HOUR)
    assert levels("batch", seed, [0.0, listed[0][3] - 1e-6])[0][1] == 0.0  # nothing read yet
    for (_, label, begin, finish), after in itertools.pairwise(listed):
        if label == "run":
            start, risen, late = levels("batch", seed, [begin, begin + 30, finish - 1e-6])
            assert start[0] < 0.1 < risen[0] == late[0]
            # its input, read into the page cache through the run, stays there once it ended
            ended = levels("batch", seed, [(after[2] + after[3]) / 2])[0]
            assert ended[0] == 0.05 and ended[1] == pytest.approx(late[1]) and ended[1] >= 0.1


# --- the guest ----------------------------------------------------------------------------------------------------


def test_the_page_cache_fills_what_is_free_and_is_given_up_under_pressure() -> None:
    memory = VmMemory.sized(4 * GIB)
    room = 4 * GIB - kernel_bytes(4 * GIB)
    memory.observe(0.0, GIB, GIB)
    assert (memory.used_now, memory.cache_now, memory.swap_now) == (GIB, GIB, 0)
    figures = memory.figures(0.0)
    assert figures.available_bytes == room - GIB  # the cache counts as available
    memory.observe(1.0, room - 100 * MIB, GIB)
    assert memory.cache_now == 100 * MIB and memory.swap_now == 0  # the cache gave way first
    assert memory.stall_now == 0.0


def test_demand_above_the_size_swaps_and_stalls_and_above_size_plus_swap_the_oom_killer_strikes_once() -> None:
    memory = VmMemory.sized(2 * GIB)
    room = 2 * GIB - kernel_bytes(2 * GIB)
    swapped = 512 * MIB
    assert not memory.observe(0.0, room + swapped, GIB)
    assert (memory.used_now, memory.swap_now, memory.cache_now) == (room, swapped, 0)
    assert memory.figures(0.0).available_bytes == 0
    stall = swapped * SWAP_TOUCH_PER_S / SWAP_READ_BYTES_PER_S
    assert memory.stall_now == pytest.approx(stall) and 0 < stall < 1
    memory.accumulate(2.0)
    assert memory.swap_in_bytes == pytest.approx(2.0 * swapped * SWAP_TOUCH_PER_S)
    assert memory.stall_seconds == pytest.approx(2.0 * stall)
    # past RAM and swap: killed, and only once while its job starts again, though it asks the same
    too_much = room + SWAP_BYTES + MIB
    assert memory.observe(10.0, too_much, 0)
    assert memory.oom_kills == 1 and memory.swap_now == 0 and memory.restarting(10.0)
    assert not memory.observe(10.25, too_much, 0) and not memory.observe(10.0 + OOM_RESTART_S - 0.1, too_much, 0)
    assert memory.oom_kills == 1
    # started again, it asks as much as before: killed again, counted again
    assert memory.observe(10.0 + OOM_RESTART_S, too_much, 0)
    assert memory.oom_kills == 2
    assert memory.figures(30.0).oom_kills == 2


def test_a_big_vm_shrunk_small_is_killed_once_per_restart_though_its_restart_does_not_fit_either() -> None:
    memory = VmMemory.sized(64 * GIB)  # a restart holds 5 %, 3.2 GiB: more than 1 GiB of RAM and 1 GiB of swap
    done = memory.begin_resize(GIB, 0.0)
    kills = [memory.observe(done + i * 0.25, 20 * GIB, 0) for i in range(int(2 * OOM_RESTART_S / 0.25))]
    assert sum(kills) == 2 and kills[0] and kills[int(OOM_RESTART_S / 0.25)]
    assert memory.swap_now == 0 and memory.used_now <= GIB  # the restart holds what RAM holds


def test_a_vm_that_swaps_runs_its_work_slower_by_the_share_it_stalls() -> None:
    # inference holds its model, 0.28-0.43 of its 4 GiB: in 1 GiB (944 MiB beside the kernel) it swaps the rest
    vm = SimVm(
        name="v", max_vcpus=2, online_vcpus=2, workload=Workload("inference", 2, 3, 0.0), memory=VmMemory.sized(4 * GIB)
    )
    assert vm.observe_memory(0.0, 2.0) == (2.0, False) and vm.progress == 1.0
    memory = vm.memory_device()
    done = memory.begin_resize(GIB, 0.0)
    demand, killed = vm.observe_memory(done, 2.0)
    assert not killed and 0 < memory.swap_now < SWAP_BYTES
    stall = memory.swap_now * SWAP_TOUCH_PER_S / SWAP_READ_BYTES_PER_S
    assert 0 < stall < 1
    # its tasks wait for page-ins that share of the time: they neither run nor progress
    assert demand == pytest.approx(2.0 * (1 - stall)) and vm.progress == pytest.approx(1 - stall)
    # given its memory back, it runs as before
    memory.begin_resize(4 * GIB, done)
    assert vm.observe_memory(done + 1.0, 2.0) == (2.0, False) and vm.progress == 1.0


# --- virtio-mem's timing ------------------------------------------------------------------------------------------


def test_a_grow_is_there_in_about_a_tenth_of_a_second_and_a_shrink_gives_back_about_a_gib_a_second() -> None:
    assert move_time(GIB, 2 * GIB) == pytest.approx(0.12)
    assert move_time(2 * GIB, GIB) == pytest.approx(1.2)
    assert move_time(4 * GIB, GIB) == pytest.approx(2.8)
    # nothing moves before the latency; then 2 MiB steps, never past the target
    assert size_during(GIB, 2 * GIB, 0.09) == GIB
    assert size_during(2 * GIB, GIB, 0.39) == 2 * GIB
    assert size_during(2 * GIB, GIB, 0.8) == 2 * GIB - 512 * MIB
    assert size_during(GIB, 2 * GIB, 0.12) == 2 * GIB == size_during(GIB, 2 * GIB, 100.0)
    sizes = [size_during(2 * GIB, GIB, i * 0.01) for i in range(150)]
    assert all(s % MEMORY_STEP_BYTES == 0 for s in sizes)
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == GIB
    assert len(set(sizes)) > 50  # stepwise, not all at once


def test_a_new_request_replaces_the_one_under_way_from_the_size_reached() -> None:
    memory = VmMemory.sized(4 * GIB)
    assert memory.begin_resize(2 * GIB, 0.0) == pytest.approx(2.0)
    reached = memory.size_at(1.0)
    assert reached == 4 * GIB - 768 * MIB
    done = memory.begin_resize(4 * GIB, 1.0)
    assert done == pytest.approx(1.0 + move_time(reached, 4 * GIB))
    assert memory.size_at(1.05) == reached and memory.size_at(done) == 4 * GIB
    # the same target asked again (a retry) neither restarts nor delays the move under way
    assert memory.begin_resize(4 * GIB, 1.06) == pytest.approx(done)
    assert memory.size_at(done) == 4 * GIB


def test_the_device_refuses_past_its_limits_and_off_its_block() -> None:
    cloud = MiniCloud.generate(1, seed=1, start=0.0)
    vm = cloud.get("vm-01")
    memory = vm.memory_device()
    assert (memory.requested_bytes, memory.max_bytes, memory.min_bytes) == (4 * GIB, 4 * GIB, GIB)
    for target in (4 * GIB + MEMORY_STEP_BYTES, GIB - MEMORY_STEP_BYTES, 2 * GIB + 1):
        with pytest.raises(HotplugRefused) as info:
            vm.check_memory_resize(target)
        assert info.value.code is ErrorCode.OUT_OF_BOUNDS
    bare = SimVm(name="b", max_vcpus=1, online_vcpus=1, workload=Workload("idle", 1, 1, 0.0))
    with pytest.raises(HotplugRefused) as info:
        bare.check_memory_resize(GIB)
    assert info.value.code is ErrorCode.HOTPLUG_DISABLED


# --- the host -----------------------------------------------------------------------------------------------------


def test_a_run_that_moves_no_memory_has_the_cpu_figures_it_had_without_memory() -> None:
    def run(memory: bool) -> list[SimVmCounters]:
        vms = list(MiniCloud.generate(4, seed=9, start=0.0).vms.values())
        if not memory:
            for vm in vms:
                vm.memory = None
        host = Host(12, 24, resident=vms)
        host.advance(HOUR)
        return host.counters()

    with_memory, without = run(True), run(False)
    assert [c.memory is not None for c in with_memory] == [True] * 4
    strip = [(c.vm, c.cpu_seconds, c.waiting_core_seconds, c.host_wait_core_seconds) for c in with_memory]
    assert strip == [(c.vm, c.cpu_seconds, c.waiting_core_seconds, c.host_wait_core_seconds) for c in without]
    assert all(c.memory is not None and c.memory.swap_in_bytes == 0 and c.memory.oom_kills == 0 for c in with_memory)


def work_job(memory_gib: int = 8) -> Job:
    return Job(
        name="train", requested_vcpus=2, max_vcpus=2, profile="inference", arrival_s=0.0, work_s=600.0, seed=3,
        memory_bytes=memory_gib * GIB,
    )  # fmt: skip


def test_a_job_shrunk_into_swap_runs_slower_and_one_shrunk_past_swap_is_killed_and_starts_its_work_again() -> None:
    def run(target: int | None) -> Host:
        host = Host(4, 4, jobs=[work_job()])
        host.advance(60.0)
        if target is not None:
            host.begin_memory_resize("train", target, 60.0)
        host.advance(400.0)
        return host

    # the shrink to 1 GiB passes what it asks (RAM and swap) about 5 s in: killed then, its work is lost
    host = Host(4, 4, jobs=[work_job()])
    host.advance(60.0)
    host.begin_memory_resize("train", GIB, 60.0)
    host.advance(64.0)
    before = host.jobs()[0]
    assert before.oom_kills == 0 and before.work_done_s > 30
    host.advance(70.0)
    after = host.jobs()[0]
    assert after.oom_kills == 1 and after.work_done_s == 0.0  # and it does none while it starts again

    plain = run(None)
    # this one asks 2.9-4.8 GiB over the run: in 4.5 GiB (4.37 beside the kernel) its bursts swap, and fit in swap;
    # in 1 GiB nothing it asks fits
    swapping = run(4608 * MIB)
    killed = run(GIB)
    work = {name: h.jobs()[0].work_done_s for name, h in (("plain", plain), ("swap", swapping), ("kill", killed))}
    assert work["plain"] > work["swap"] > work["kill"]
    memory = swapping.counters()[0].memory
    assert memory is not None and memory.swap_in_bytes > 0 and memory.stall_seconds > 0 and memory.oom_kills == 0
    assert killed.jobs()[0].oom_kills >= 1 and killed.state().oom_kills == killed.jobs()[0].oom_kills
    victim = killed.counters()[0].memory
    assert victim is not None and victim.oom_kills == killed.jobs()[0].oom_kills and victim.size_bytes == GIB
    assert plain.state().oom_kills == 0


def test_with_a_memory_capacity_jobs_wait_for_memory_and_a_grow_past_it_is_refused() -> None:
    jobs = [work_job(8), Job(name="next", requested_vcpus=1, max_vcpus=1, profile="idle", arrival_s=1.0, work_s=60)]
    host = Host(8, 8, jobs=jobs, memory_capacity_bytes=9 * GIB)
    host.advance(5.0)
    assert host.state().committed_memory_bytes == 8 * GIB
    assert [j.name for j in host.waiting] == ["next"]  # 2 GiB more would pass 9 GiB
    host.begin_memory_resize("train", 6 * GIB, 5.0)
    assert host.state().committed_memory_bytes == 8 * GIB  # held until given back
    host.advance(5.0 + move_time(8 * GIB, 6 * GIB) + 0.25)
    assert host.waiting == [] and host.state().committed_memory_bytes == 8 * GIB  # 6 + 2
    with pytest.raises(HotplugRefused) as info:
        host.begin_memory_resize("train", 8 * GIB, host.time)
    assert info.value.code is ErrorCode.HOST_FULL
    # without a capacity memory never holds a job back
    free = Host(8, 8, jobs=jobs)
    free.advance(5.0)
    assert free.waiting == [] and free.state().memory_capacity_bytes is None


# --- what the collector's source makes of it ----------------------------------------------------------------------


def test_the_source_hands_the_collector_sizes_and_cumulative_counters_and_the_collector_makes_rates() -> None:
    def counters(swap_in: float, stall: float, time: float) -> Reading:
        memory = SimMemory(
            size_bytes=GIB, requested_bytes=GIB, min_bytes=GIB, max_bytes=2 * GIB, step_bytes=MEMORY_STEP_BYTES,
            available_bytes=GIB - 300 * MIB, swap_in_bytes=swap_in, stall_seconds=stall, oom_kills=1,
        )  # fmt: skip
        return Reading(
            vm="v", time=time, online_vcpus=1, min_vcpus=1, max_vcpus=1, cpu_seconds=0.0,
            memory=memory_counters(memory),
        )  # fmt: skip

    sample = sample_from(counters(0.0, 0.0, 10.0), counters(200.0 * MIB, 1.0, 14.0), "h", "simulator")
    assert sample is not None and sample.memory is not None
    assert sample.memory.used_bytes == 300 * MIB and sample.memory.oom_kills == 1
    assert sample.memory.swap_in_bytes_per_s == pytest.approx(50.0 * MIB) and sample.memory.psi_some == pytest.approx(
        0.25
    )
    assert memory_counters(None) is None  # an older simulator: no memory


def test_hotplug_ups_job_summary_counts_oom_kills_and_says_nothing_of_them_when_there_were_none() -> None:
    def job(name: str, kills: int) -> SimJob:
        return SimJob(
            name=name, profile="batch", requested_vcpus=2, max_vcpus=2, arrival_s=0.0, start_s=0.0, oom_kills=kills
        )

    waits = job_waits([job("a", 2), job("b", 0), job("c", 1)], end_s=100.0)
    assert waits.oom_kills == 3 and "; 3 OOM kills" in waits.line()
    assert "OOM" not in job_waits([job("a", 0)], end_s=100.0).line()


class OldCounters(msgspec.Struct, frozen=True, kw_only=True):
    """What a reader built before memory knew of a VM's counters (a part: the rest is as it was)."""

    vm: str
    online_vcpus: int
    cpu_seconds: float


class OldHost(msgspec.Struct, frozen=True, kw_only=True):
    cores: int
    capacity_vcpus: int


class OldReply(msgspec.Struct, frozen=True, kw_only=True):
    time: float
    vms: list[OldCounters]
    host: OldHost | None = None


def test_a_reader_built_before_memory_reads_the_new_stats_and_a_new_reader_the_old() -> None:
    host = Host(4, 4, resident=list(MiniCloud.generate(1, seed=1, start=0.0).vms.values()))
    host.advance(10.0)
    new = msgspec.json.encode(StatsReply(time=10.0, vms=host.counters(), host=host.state()))
    old = msgspec.json.decode(new, type=OldReply)
    assert old.vms[0].vm == "vm-01" and old.host == OldHost(cores=4, capacity_vcpus=4)
    # and a reply of an older simulator: no memory anywhere, every memory field at its default
    bare = msgspec.json.encode(old)
    read = msgspec.json.decode(
        bare.replace(b'"online_vcpus"', b'"min_vcpus":1,"max_vcpus":4,"per_vcpu_seconds":[],"waiting_core_seconds":0,'
                     b'"profile":"idle","online_vcpus"'),
        type=StatsReply,
    )  # fmt: skip
    assert read.vms[0].memory is None
    assert read.host == SimHost(cores=4, capacity_vcpus=4) and read.host.memory_capacity_bytes is None
