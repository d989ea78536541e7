"""One shared host through a span of arrivals, in this process: the pool benchmark's run. Pure.

The simulated host (``services.simulator.host.Host``: physical cores, a capacity, jobs arriving and waiting to
start) is stepped once per ``interval_s`` as the collector samples it; each running VM's sample goes through the
decider's own code (``VmEngine.propose``, the host's ``HostPlanner``, ``VmEngine.decide``) and each order
through the actuator's host arbitration (a grow only into the room its host has, in whole vCPUs, as
``services.actuator.reservations`` grants it on a fresh view of the host) before the host carries it out, one vCPU
per ``HOTPLUG_DELAY_S``. The same arrivals with no decider at all are today's IaaS: every VM keeps what it asked for.

Memory goes the same way, in its own lane: each VM's memory is read as the collector reads the simulator's (its
counters, then the swap-in rate and PSI over the interval, ``services.collector.rates.memory_from``), scored by the
live tally (``evaluation.memory_tally``) and, under a setup with a memory rule, taken by the decider's
``MemoryEngine``, then, when the host's memory is limited, by its ``MemoryLedger``; an order passes the actuator's
memory checks (``services.actuator.memory_checks``) and goes to the host (``Host.begin_memory_resize``, which refuses
a grow past its memory capacity). Memory orders draw nothing from the CPU's random streams and change no CPU demand
unless a guest swaps (its tasks stall) or is OOM-killed (its work starts again).

Nothing here waits on a clock or a bus, so hours of a host take seconds, and a run is the same on every machine.
What it measures is the decisions and the arbitration, not the plumbing (``hotplug bench decisions`` runs the
whole loop live).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from evaluation.bench.common import percentile
from evaluation.memory_tally import MEMORY_SCORE_KEYS, MemoryTally
from services.actuator.checks import Bounds, Refusal
from services.actuator.drivers.base import HostView
from services.actuator.drivers.simulator import memory_view
from services.actuator.memory_checks import plan_memory
from services.actuator.reservations import Reservations
from services.collector.rates import memory_from
from services.collector.sources.base import MemoryCounters
from services.collector.sources.simulator import memory_counters
from services.decider.engine import VmEngine
from services.decider.guard import GuardRails
from services.decider.harm import HarmSteer
from services.decider.memory.engine import MemoryEngine
from services.decider.memory.ledger import MemoryLedger, MemoryView, within_host
from services.decider.memory.policy import MemoryPolicy
from services.decider.policies.base import Observation, PolicyBase
from services.decider.pool import HostPlanner, claim_of
from services.decider.pool import HostView as PlannerView
from services.simulator.cloud import HotplugRefused, SimVm
from services.simulator.host import Host
from services.simulator.jobs import Job
from shared.config.rules import VmSettings
from shared.messages import DeferralAction, ErrorCode, Resource, ScaleCommand, ScaleResult, short_text
from shared.pool import insurance_of

FIXED = "fixed"  # no decider: every VM keeps what it asked for
HOTPLUG_DELAY_S = 0.3  # the simulator's default time per vCPU plugged or unplugged
BENCH_HOST = "bench"  # the host's name where a message or the memory tally needs one
COMMAND_TTL_S = 30.0
UNDO_WINDOW_S = 60.0


@dataclass(frozen=True)
class Setup:
    """One way to run the pool: ``policy`` (or ``FIXED``) with its rails, the rule each job's VM runs under, and the
    memory rule (None: every VM keeps the memory it asked for)."""

    name: str
    policy: Callable[[], tuple[PolicyBase[Any, Any], GuardRails]] | None
    settings: Callable[[Job], VmSettings]
    memory: MemoryPolicy | None = None


@dataclass
class _VmTrack:
    vm: SimVm
    engine: VmEngine | None
    settings: VmSettings
    cpu_s: float = 0.0
    wait_s: float = 0.0
    changes: list[tuple[float, int]] = field(default_factory=list)  # (time, direction) of each resize carried out
    memory_engine: MemoryEngine | None = None
    memory_seen: MemoryCounters | None = None  # its memory counters at the last step, as the collector keeps them


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
    memory: MemoryTally = field(default_factory=MemoryTally)
    memory_orders: int = 0  # orders the memory rule gave (cut by the ledger or not), deferred ones not counted
    memory_refused: int = 0  # of them, refused by the actuator's checks or the host
    memory_deferred: int = 0  # memory grows the ledger deferred (each counted once, when it starts waiting)

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
            **self.memory.scores(),
            "memory_orders": self.memory_orders,
            "memory_refused": self.memory_refused,
            "memory_deferred": self.memory_deferred,
        }


# Every memory figure of a pool run's scores: the live tally's, then the memory lane's orders.
POOL_MEMORY_KEYS = (*MEMORY_SCORE_KEYS, "memory_orders", "memory_refused", "memory_deferred")


def run_pool(
    setup: Setup,
    jobs: Sequence[Job],
    *,
    cores: int,
    capacity: int,
    span_s: float,
    watermark: float = 1.0,
    interval_s: float = 1.0,
    memory_capacity_bytes: int | None = None,
) -> PoolRun:
    """``jobs`` arriving at a host of ``cores`` and ``capacity`` for ``span_s`` seconds under ``setup``; with
    ``memory_capacity_bytes``, the host's memory is limited to it (jobs wait for it, grows are planned against it)."""
    host = Host(cores, capacity, jobs=jobs, origin=0.0, memory_capacity_bytes=memory_capacity_bytes)
    planner = HostPlanner(PlannerView(capacity, 0, insurance_of(capacity, watermark)))
    ledger = None
    if memory_capacity_bytes is not None and setup.memory is not None:
        ledger = MemoryLedger(MemoryView(memory_capacity_bytes, 0))
    tracks: dict[str, _VmTrack] = {}
    settings_of = {job.name: job for job in jobs}
    run = PoolRun(setup.name, span_s, capacity)
    steps = int(span_s / interval_s)
    # The fleet's harm steer, as the decider keeps one per policy: at each step it folds in what came before.
    steer = setup.policy()[0].harm_steer() if setup.policy is not None else None
    for i in range(1, steps + 1):
        now = i * interval_s
        host.advance(now)
        committed = host.committed_vcpus
        run.committed_core_s += committed * interval_s
        run.max_over_capacity = max(run.max_over_capacity, committed - capacity)
        running = host.vms
        if steer is not None:
            steer.advance(now)
        if setup.policy is not None:
            waiting = host.waiting
            head = waiting[0].requested_vcpus if waiting else None
            planner.observe_host(PlannerView(capacity, committed, planner.view.insurance, head, now), now)
        if ledger is not None:
            assert memory_capacity_bytes is not None
            ledger.observe_host(MemoryView(memory_capacity_bytes, host.committed_memory_bytes, now), now)
        for vm in running:
            track = tracks.get(vm.name)
            if track is None:
                job = settings_of.get(vm.name)
                settings = setup.settings(job) if job is not None else _DEFAULT_SETTINGS
                engine = VmEngine(*setup.policy()) if setup.policy is not None else None
                track = tracks[vm.name] = _VmTrack(vm, engine, settings, vm.cpu_seconds, vm.waiting_core_seconds)
                if setup.memory is not None:
                    bounds = (settings.min_memory_bytes, settings.max_memory_bytes)  # its rule's, as the decider's
                    track.memory_engine = MemoryEngine(setup.memory, bounds)
            used = (vm.cpu_seconds - track.cpu_s) / interval_s
            pressure = (vm.waiting_core_seconds - track.wait_s) / interval_s
            track.cpu_s, track.wait_s = vm.cpu_seconds, vm.waiting_core_seconds
            if track.engine is not None:
                _decide(host, planner, track, run, now, used, pressure, interval_s, steer)
            # After the vCPUs, as the decider takes a sample: memory is the VM's other lane.
            _memory(host, ledger, track, run, now, interval_s)
        for name in [n for n in tracks if n not in {vm.name for vm in running}]:
            if setup.policy is not None:
                planner.forget(name)
            if ledger is not None:
                ledger.forget(name)
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
    steer: HarmSteer | None,
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
    if steer is not None:
        steer.observe(obs)
        obs = msgspec.structs.replace(obs, price_factor=steer.factor)
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


def _memory(
    host: Host, ledger: MemoryLedger | None, track: _VmTrack, run: PoolRun, now: float, interval_s: float
) -> None:
    """The VM's memory read as the collector reads it, counted, and (under a memory rule) decided and carried out."""
    vm = track.vm
    memory = vm.memory
    if memory is None:
        return
    if memory.quiet:
        # The host skips a quiet VM's memory (nothing can happen to it): its figures are taken when read, as the
        # simulator's counters take them. A quiet guest neither swaps nor stalls, so its CPU is untouched.
        vm.observe_memory(now, 0.0)
    counters = memory_counters(memory.figures(now))
    assert counters is not None
    reading = memory_from(track.memory_seen, counters, interval_s)
    track.memory_seen = counters
    run.memory.add_memory(BENCH_HOST, vm.name, reading, interval_s)
    engine = track.memory_engine
    if engine is None:
        return
    decision = engine.step(now, reading, interval_s)
    if ledger is not None:
        decision, events = within_host(
            ledger,
            vm.name,
            reading.size_bytes,
            engine,
            decision,
            priority=track.settings.priority,
            interval_s=interval_s,
            time=now,
            now=now,
        )
        run.memory_deferred += sum(1 for event in events if event.action is DeferralAction.DEFERRED)
    if decision is None:
        return
    run.memory_orders += 1
    before = reading.size_bytes
    command = ScaleCommand(
        id=f"{vm.name}-m{run.memory_orders}",
        time=now,
        host=BENCH_HOST,
        vm=vm.name,
        resource=Resource.MEMORY,
        target_memory_bytes=decision.target,
        seen_memory_bytes=before,
        decider="bench",
        reason=short_text(decision.reason),
        expires_at=now + COMMAND_TTL_S,
        sample_time=now,
    )
    figures = memory.figures(now)
    # The actuator's own checks on the VM's memory as its simulator driver reads it: bounds, a view gone stale,
    # and the backstop against a shrink below what the guest uses.
    view = memory_view(vm.name, figures)
    planned = plan_memory(command, view, Bounds())
    if isinstance(planned, Refusal):
        _memory_refused(engine, command, planned.code, planned.message, before, host, run, now)
        return
    if planned.direction == 0:
        return
    try:
        host.begin_memory_resize(vm.name, planned.target, now)
    except HotplugRefused as exc:
        if exc.code is ErrorCode.HOST_FULL and ledger is not None:
            assert host.memory_capacity_bytes is not None
            ledger.learn_full(host.memory_capacity_bytes, host.committed_memory_bytes, now)
        _memory_refused(engine, command, exc.code, str(exc), before, host, run, now)
        return
    # In flight until its samples show the target (the engine's own test), as live, where the result comes once the
    # move is done; the move always reaches its target here (partial moves are not modelled), so it is counted now.
    engine.mark_sent(planned.target, until=now + COMMAND_TTL_S, command_id=command.id)
    run.memory.add_result(_memory_result(command, True, before, planned.target, host, now))


def _memory_refused(
    engine: MemoryEngine,
    command: ScaleCommand,
    code: ErrorCode,
    message: str,
    before: int,
    host: Host,
    run: PoolRun,
    now: float,
) -> None:
    """A memory order refused: the engine learns its hold from the result, as from the actuator's."""
    run.memory_refused += 1
    engine.learn_result(_memory_result(command, False, before, before, host, now, code, message))


def _memory_result(
    command: ScaleCommand,
    ok: bool,
    before: int,
    after: int,
    host: Host,
    now: float,
    code: ErrorCode | None = None,
    message: str | None = None,
) -> ScaleResult:
    return ScaleResult(
        command_id=command.id,
        time=now,
        host=BENCH_HOST,
        vm=command.vm,
        ok=ok,
        vcpus_before=None,
        vcpus_after=None,
        duration_s=0.0,
        actuator="bench",
        error_code=code,
        error=None if message is None else short_text(message),
        sample_time=command.sample_time,
        resource=Resource.MEMORY,
        target_memory_bytes=command.target_memory_bytes,
        memory_before_bytes=before,
        memory_after_bytes=after,
        host_capacity_memory_bytes=host.memory_capacity_bytes if code is ErrorCode.HOST_FULL else None,
        host_committed_memory_bytes=host.committed_memory_bytes if code is ErrorCode.HOST_FULL else None,
    )


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
