"""One shared host through a span of arrivals, in this process: the pool benchmark's run. Pure.

The simulated host (``services.simulator.host.Host``: physical cores, a capacity, jobs arriving and waiting to
start) is stepped once per ``interval_s`` as the collector samples it; each running VM's sample goes through the
decider's own code (``VmEngine.propose``, the host's ``HostPlanner``, ``VmEngine.decide``) and each order
through the actuator's host arbitration (a grow only into the room its host has, in whole vCPUs, as
``services.actuator.reservations`` grants it on a fresh view of the host) before the host carries it out, one vCPU
per ``HOTPLUG_DELAY_S``. The same arrivals with no decider at all are today's IaaS: every VM keeps what it asked for.

Nothing here waits on a clock or a bus, so hours of a host take seconds, and a run is the same on every machine.
What it measures is the decisions and the arbitration, not the plumbing (``hotplug bench decisions`` runs the
whole loop live).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from evaluation.bench.common import percentile
from services.actuator.drivers.base import HostView
from services.actuator.reservations import Reservations
from services.decider.engine import VmEngine
from services.decider.guard import GuardRails
from services.decider.policies.base import Observation, PolicyBase
from services.decider.pool import HostPlanner, claim_of
from services.decider.pool import HostView as PlannerView
from services.simulator.cloud import HotplugRefused, SimVm
from services.simulator.host import Host
from services.simulator.jobs import Job
from shared.config.rules import VmSettings
from shared.messages import ErrorCode, ScaleResult
from shared.pool import insurance_of

FIXED = "fixed"  # no decider: every VM keeps what it asked for
HOTPLUG_DELAY_S = 0.3  # the simulator's default time per vCPU plugged or unplugged
COMMAND_TTL_S = 30.0
UNDO_WINDOW_S = 60.0


@dataclass(frozen=True)
class Setup:
    """One way to run the pool: ``policy`` (or ``FIXED``) with its rails, and the rule each job's VM runs under."""

    name: str
    policy: Callable[[], tuple[PolicyBase[Any, Any], GuardRails]] | None
    settings: Callable[[Job], VmSettings]


@dataclass
class _VmTrack:
    vm: SimVm
    engine: VmEngine | None
    settings: VmSettings
    cpu_s: float = 0.0
    wait_s: float = 0.0
    changes: list[tuple[float, int]] = field(default_factory=list)  # (time, direction) of each resize carried out


@dataclass
class PoolRun:
    """What one setup did with one span of arrivals on one host."""

    setup: str
    span_s: float
    capacity: int
    jobs: int = 0
    started: int = 0
    finished: int = 0
    waits_s: list[float] = field(default_factory=list)
    slowdowns: list[float] = field(default_factory=list)
    used_core_s: float = 0.0
    committed_core_s: float = 0.0
    demand_core_s: float = 0.0
    unmet_core_s: float = 0.0
    vm_s: float = 0.0
    changes: int = 0
    undone: int = 0
    host_full: int = 0
    orders: int = 0
    max_over_capacity: int = 0

    def scores(self) -> dict[str, float]:
        cap_s = self.capacity * self.span_s
        return {
            "jobs": self.jobs,
            "started": self.started,
            "completed": self.finished,
            "wait_p50_s": percentile(self.waits_s, 0.5),
            "wait_p95_s": percentile(self.waits_s, 0.95),
            "slowdown_p50": percentile(self.slowdowns, 0.5),
            "slowdown_p95": percentile(self.slowdowns, 0.95),
            "host_use_pct": 100 * self.used_core_s / cap_s if cap_s else 0.0,
            "committed_pct": 100 * self.committed_core_s / cap_s if cap_s else 0.0,
            "unmet_pct": 100 * self.unmet_core_s / self.demand_core_s if self.demand_core_s else 0.0,
            "changes_per_vm_hour": self.changes / (self.vm_s / 3600) if self.vm_s else 0.0,
            "undone_pct": 100 * self.undone / self.changes if self.changes else 0.0,
            "host_full": self.host_full,
            "orders": self.orders,
            "max_over_capacity": self.max_over_capacity,
        }


def run_pool(
    setup: Setup,
    jobs: Sequence[Job],
    *,
    cores: int,
    capacity: int,
    span_s: float,
    watermark: float = 1.0,
    interval_s: float = 1.0,
) -> PoolRun:
    """``jobs`` arriving at a host of ``cores`` and ``capacity`` for ``span_s`` seconds under ``setup``."""
    host = Host(cores, capacity, jobs=jobs, origin=0.0)
    planner = HostPlanner(PlannerView(capacity, 0, insurance_of(capacity, watermark)))
    tracks: dict[str, _VmTrack] = {}
    settings_of = {job.name: job for job in jobs}
    run = PoolRun(setup.name, span_s, capacity)
    steps = int(span_s / interval_s)
    for i in range(1, steps + 1):
        now = i * interval_s
        host.advance(now)
        committed = host.committed_vcpus
        run.committed_core_s += committed * interval_s
        run.max_over_capacity = max(run.max_over_capacity, committed - capacity)
        running = host.vms
        if setup.policy is not None:
            waiting = host.waiting
            head = waiting[0].requested_vcpus if waiting else None
            planner.observe_host(PlannerView(capacity, committed, planner.view.insurance, head, now), now)
        for vm in running:
            track = tracks.get(vm.name)
            if track is None:
                job = settings_of.get(vm.name)
                settings = setup.settings(job) if job is not None else _DEFAULT_SETTINGS
                engine = VmEngine(*setup.policy()) if setup.policy is not None else None
                track = tracks[vm.name] = _VmTrack(vm, engine, settings, vm.cpu_seconds, vm.waiting_core_seconds)
            used = (vm.cpu_seconds - track.cpu_s) / interval_s
            pressure = (vm.waiting_core_seconds - track.wait_s) / interval_s
            track.cpu_s, track.wait_s = vm.cpu_seconds, vm.waiting_core_seconds
            if track.engine is None:
                continue
            _decide(host, planner, track, run, now, used, pressure, interval_s)
        for name in [n for n in tracks if n not in {vm.name for vm in running}]:
            if setup.policy is not None:
                planner.forget(name)
            _close(tracks.pop(name), run)
    host.advance(span_s)
    for track in tracks.values():
        _close(track, run)
    _score_jobs(host, run, span_s)
    return run


_DEFAULT_SETTINGS = VmSettings("default", None, "auto", "default", {}, None, None)


def _decide(
    host: Host,
    planner: HostPlanner,
    track: _VmTrack,
    run: PoolRun,
    now: float,
    used: float,
    pressure: float,
    interval_s: float,
) -> None:
    vm, engine = track.vm, track.engine
    assert engine is not None
    obs = Observation(
        time=now,
        vcpus=vm.online_vcpus,
        min_vcpus=vm.min_vcpus,
        max_vcpus=vm.max_vcpus,
        used_cores=min(used, float(vm.online_vcpus)),
        interval_s=interval_s,
        pressure_cores=max(0.0, pressure),
    )
    proposal = engine.propose(obs)
    if proposal is None:
        return
    answer = planner.claim(claim_of(vm.name, proposal, track.settings, engine.pending_target), now)
    decision = engine.decide(proposal, None, answer.limit)
    if decision is None:
        return
    run.orders += 1
    target = decision.target
    before = vm.online_vcpus
    if target > before:
        # The actuator's own arbitration (services.actuator.reservations) on a fresh view of the host, whose counts
        # include the vCPUs being plugged: the grant needs no reservation beyond this step.
        ledger = Reservations("bench")
        ledger.observe(
            HostView(cpus=host.cores, vms={v.name: v.online_vcpus + v.plugging for v in host.vms}),
            host.capacity_vcpus,
            ledger.ticket(),
        )
        granted = ledger.grant(vm.name, before, target).size
        if granted < target:
            run.host_full += 1
            engine.learn_result(_host_full(vm.name, before, granted, target, host, now), now)
            planner.learn_full(host.capacity_vcpus, host.committed_vcpus, now)
            if granted == before:
                return
        target = granted
    try:
        host.begin_resize(vm.name, target, now, HOTPLUG_DELAY_S)
    except HotplugRefused as exc:
        if exc.code is ErrorCode.HOST_FULL:
            run.host_full += 1
        return
    engine.mark_sent(target, until=now + COMMAND_TTL_S, command_id=f"{vm.name}-{run.orders}")
    track.changes.append((now, 1 if target > before else -1))


def _host_full(vm: str, before: int, after: int, target: int, host: Host, now: float) -> ScaleResult:
    return ScaleResult(
        command_id=f"bench-{vm}-{now:g}",
        time=now,
        host="bench",
        vm=vm,
        ok=False,
        vcpus_before=before,
        vcpus_after=after,
        target_vcpus=target,
        duration_s=0.0,
        actuator="bench",
        error_code=ErrorCode.HOST_FULL,
        error=f"granted {after - before} of {target - before} vCPUs asked",
        retry_after=2.0,
        host_capacity_vcpus=host.capacity_vcpus,
        host_committed_vcpus=host.committed_vcpus,
    )


def _close(track: _VmTrack, run: PoolRun) -> None:
    vm = track.vm
    demand = vm.cpu_seconds + vm.waiting_core_seconds + vm.host_wait_core_seconds
    run.used_core_s += vm.cpu_seconds
    run.demand_core_s += demand
    run.unmet_core_s += vm.waiting_core_seconds + vm.host_wait_core_seconds
    run.changes += len(track.changes)
    run.undone += sum(
        1
        for (t0, d0), (t1, d1) in zip(track.changes, track.changes[1:], strict=False)
        if d1 == -d0 and t1 - t0 <= UNDO_WINDOW_S
    )


def _score_jobs(host: Host, run: PoolRun, span_s: float) -> None:
    for job in host.jobs():
        if job.rejected:
            continue
        run.jobs += 1
        start = job.start_s
        run.waits_s.append((start if start is not None else span_s) - job.arrival_s)
        if start is not None:
            run.started += 1
            end = job.end_s if job.end_s is not None else span_s
            run.vm_s += max(0.0, end - start)
        if job.end_s is not None:
            run.finished += 1
            if job.work_s:
                run.slowdowns.append((job.end_s - (start or 0.0)) / job.work_s)
