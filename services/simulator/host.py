"""The simulated host: physical cores shared by its running VMs, a capacity it admits them against, and a queue of
jobs waiting to start. Pure and clock-free: every call takes the simulated time.

* **Sharing.** Each VM wants ``min(demand, online vCPUs)`` cores (the rest of its demand is its own pressure).
  When the VMs together want more than the host's ``cores``, each runs its proportional share, as a fair CPU
  scheduler gives it (VM i runs ``want_i × cores / Σ want``), and the rest is *host wait*, counted apart from the
  VMs' own pressure. All VMs are integrated together, in host-wide steps of at most ``max_step_s`` (0.25 s),
  cut short at every event (an arrival, a job's end, a vCPU plugged), so events fall where they happen.
* **Jobs** (``services.simulator.jobs``) start first come, first served, when the host can commit their requested
  size: committed (online vCPUs of the running VMs, plus vCPUs being plugged) + requested ≤ capacity. The head of
  the queue blocks the rest (no skipping). A work job advances at (CPU it got ÷ its demand) seconds of work per
  second and ends when its work is done; a lifetime job ends at start + lifetime. A finished VM leaves the host at
  once and its vCPUs are free. A job that asks for more than the whole capacity (or the name of a running VM) is
  rejected when it arrives.
* **Hot-plug** follows VirtualBox's rules (``SimVm.check_resize``) and, as the hypervisor, refuses a plug that
  would take the committed vCPUs above the capacity (``host-full``); unplugs always pass.
* **Memory** (``services.simulator.vm_memory``): each VM's memory follows its workload's memory demand at every step;
  while it swaps, its CPU demand and its job's progress lose the share of time it stalls, and an OOM kill starts a
  work job's work again. A memory resize is taken at once and moves in the guest's time (no event of its own). With
  ``memory_capacity_bytes`` (the host's RAM times its overcommit) jobs also wait for memory and a grow past it is
  refused (``host-full``); without it (the default) memory is counted, never limited, so runs are what they were.

:func:`fixed_sizes` runs the same arrivals with no resize at all (each VM keeps the size it asked for, as in
today's IaaS): the counterfactual a run with hot-plug is measured against.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from services.simulator.cloud import EPSILON_S, MAX_INTEGRATION_STEP_S, HotplugRefused, SimVm
from services.simulator.jobs import Job
from services.simulator.stall import StallTrigger
from services.simulator.vm_memory import VmMemory
from services.simulator.workloads import Workload
from shared.messages import ErrorCode
from shared.sim_api import SimHost, SimJob, SimVmCounters

# Work left below this (seconds) is done: float steps must not leave a job a hair short of its end.
_WORK_EPSILON_S = 1e-6


@dataclass(eq=False, slots=True)
class _JobState:
    job: Job
    arrival: float  # on the host's clock
    start: float | None = None
    end: float | None = None
    remaining: float | None = None  # work jobs: seconds of work left
    end_at: float | None = None  # lifetime jobs: when it stops
    rejected: bool = False
    oom_kills: int = 0


class Outcome(NamedTuple):
    """What became of a run's jobs, and the host's totals, at its end."""

    host: SimHost
    jobs: list[SimJob]


class Host:
    """``cores`` physical cores, ``capacity_vcpus`` to commit; the ``resident`` VMs run from the start (whatever
    the capacity: they were there before), and ``jobs`` (in arrival order, times from ``origin``) arrive."""

    def __init__(
        self,
        cores: int,
        capacity_vcpus: int,
        *,
        jobs: Iterable[Job] = (),
        resident: Iterable[SimVm] = (),
        origin: float = 0.0,
        start: float | None = None,
        max_step_s: float = MAX_INTEGRATION_STEP_S,
        memory_capacity_bytes: int | None = None,
        memory_bytes: int | None = None,
        psi_trigger: tuple[float, float] | None = None,
    ) -> None:
        if cores < 1:
            raise ValueError(f"a host needs at least one core, got {cores}")
        if max_step_s <= 0:
            raise ValueError(f"the integration step must be positive, got {max_step_s}")
        self.cores = cores
        self.capacity_vcpus = capacity_vcpus
        self.memory_capacity_bytes = memory_capacity_bytes
        self.memory_bytes = memory_bytes  # its RAM, as a hypervisor reports it (None: not configured)
        self.origin = origin
        self.time = origin if start is None else start
        self.max_step_s = max_step_s
        self._vms: dict[str, SimVm] = {}
        self._job_of: dict[str, _JobState] = {}  # the running jobs, by VM name
        self._resizing: set[SimVm] = set()
        self._arrivals = iter(jobs)
        self._next: Job | None = next(self._arrivals, None)
        self._queue: deque[_JobState] = deque()
        self._states: list[_JobState] = []  # every job that arrived, in arrival order
        self._next_end = float("inf")  # the earliest end of a running lifetime job
        self._committed: int | None = None  # committed_vcpus, until a VM starts, ends or resizes
        self.host_wait_core_seconds = 0.0
        self.used_core_seconds = 0.0
        self.jobs_started = 0
        self.jobs_finished = 0
        self.jobs_rejected = 0
        self.oom_kills = 0
        # Each guest's PSI trigger (stall_s, window_s) on CPU, and the firings since last taken (VM, when).
        self.psi_trigger = psi_trigger
        self.fired: list[tuple[str, float]] = []
        for vm in resident:
            if vm.name in self._vms:
                raise ValueError(f"two resident VMs are named {vm.name!r}")
            self._watch(vm)
            self._vms[vm.name] = vm
        self._settle()

    # --- reading it -----------------------------------------------------------------------------------------

    @property
    def vms(self) -> list[SimVm]:
        """The running VMs, oldest first."""
        return list(self._vms.values())

    def vm(self, name: str) -> SimVm:
        try:
            return self._vms[name]
        except KeyError:
            raise HotplugRefused(
                ErrorCode.VM_NOT_FOUND, f"Could not find a registered machine named '{name}'"
            ) from None

    @property
    def committed_vcpus(self) -> int:
        """Online vCPUs of the running VMs, plus vCPUs being plugged."""
        if self._committed is None:
            self._committed = sum(vm.online_vcpus + vm.plugging for vm in self._vms.values())
        return self._committed

    @property
    def waiting(self) -> list[Job]:
        """The jobs waiting to start, head first."""
        return [state.job for state in self._queue]

    @property
    def committed_memory_bytes(self) -> int:
        """What the running VMs hold: each one's size, or the target it is growing to."""
        t = self.time
        return sum(vm.memory.committed(t) for vm in self._vms.values() if vm.memory is not None)

    def counters(self) -> list[SimVmCounters]:
        return [vm.counters(self.time) for vm in self._vms.values()]

    def state(self) -> SimHost:
        return SimHost(
            cores=self.cores,
            capacity_vcpus=self.capacity_vcpus,
            host_wait_core_seconds=self.host_wait_core_seconds,
            waiting_vms=len(self._queue),
            waiting_vcpus=sum(state.job.requested_vcpus for state in self._queue),
            next_waiting_vcpus=self._queue[0].job.requested_vcpus if self._queue else None,
            jobs_started=self.jobs_started,
            jobs_finished=self.jobs_finished,
            committed_vcpus=self.committed_vcpus,
            used_core_seconds=self.used_core_seconds,
            used_cores=sum(vm.used_now for vm in self._vms.values()),
            jobs_rejected=self.jobs_rejected,
            committed_memory_bytes=self.committed_memory_bytes,
            memory_capacity_bytes=self.memory_capacity_bytes,
            memory_bytes=self.memory_bytes,
            oom_kills=self.oom_kills,
        )

    def jobs(self) -> list[SimJob]:
        """Every job that arrived so far, in arrival order, with what became of it."""
        return [self._record(state) for state in self._states]

    def outcome(self) -> Outcome:
        return Outcome(self.state(), self.jobs())

    def _record(self, state: _JobState) -> SimJob:
        job = state.job
        work_done = 0.0
        if job.work_s is not None and state.remaining is not None:
            work_done = job.work_s - max(0.0, state.remaining)
        return SimJob(
            name=job.name,
            profile=job.profile,
            requested_vcpus=job.requested_vcpus,
            max_vcpus=job.max_vcpus,
            arrival_s=job.arrival_s,
            lifetime_s=job.lifetime_s,
            work_s=job.work_s,
            start_s=None if state.start is None else state.start - self.origin,
            end_s=None if state.end is None else state.end - self.origin,
            work_done_s=work_done,
            rejected=state.rejected,
            requested_memory_bytes=job.requested_memory_bytes,
            oom_kills=state.oom_kills,
        )

    # --- resizing -------------------------------------------------------------------------------------------

    def begin_resize(self, name: str, target: int, t: float, step_s: float) -> float:
        """Start taking VM ``name`` to ``target`` vCPUs, one every ``step_s`` seconds from ``t``; returns when it
        will be done (:meth:`advance` carries it out). Refused (HotplugRefused) as VirtualBox would, and with
        ``host-full`` when the vCPUs it adds do not fit in the capacity; a shrink always fits."""
        self.advance(t)
        vm = self.vm(name)
        vm.check_resize(target)
        added = target - vm.online_vcpus
        if added > 0:
            committed = self.committed_vcpus
            if committed + added > self.capacity_vcpus:
                raise HotplugRefused(
                    ErrorCode.HOST_FULL,
                    f"Failed to plug {added} CPU(s) into '{name}': the host has committed {committed} of its "
                    f"{self.capacity_vcpus} vCPUs (VERR_RESOURCE_BUSY)",
                )
        done = vm.begin_resize(target, max(t, self.time), step_s)
        self._committed = None
        if vm.resize is not None:
            self._resizing.add(vm)
            self._settle()  # a resize without delay is done at once
        return done

    def begin_hotplug(self, name: str, op: Literal["plug", "unplug"], t: float, delay_s: float) -> float:
        """One vCPU plugged or unplugged, as the hypervisor's API does it; returns when it is done."""
        vm = self.vm(name)
        return self.begin_resize(name, vm.online_vcpus + (1 if op == "plug" else -1), t, delay_s)

    def begin_memory_resize(self, name: str, target: int, t: float) -> float:
        """Ask for VM ``name``'s memory to be ``target`` bytes at ``t``; returns when the guest will have it. Refused
        (HotplugRefused) ``out-of-bounds`` past the device's limits or off its 2 MiB block, and ``host-full`` when a
        grow does not fit in the host's memory capacity. A shrink is carried out whatever the guest uses: the guest
        swaps, then its OOM killer acts, as under real virtio-mem."""
        self.advance(t)
        vm = self.vm(name)
        memory = vm.check_memory_resize(target)
        now = max(t, self.time)
        capacity = self.memory_capacity_bytes
        added = target - memory.committed(now)
        if capacity is not None and added > 0:
            committed = self.committed_memory_bytes
            if committed + added > capacity:
                raise HotplugRefused(
                    ErrorCode.HOST_FULL,
                    f"Failed to grow '{name}' by {added} bytes: the host has committed {committed} of its "
                    f"{capacity} bytes of memory",
                )
        return memory.begin_resize(target, now)

    def finish_resize(self, vm: SimVm, t: float) -> int:
        """Complete ``vm``'s resize by ``t`` (what remains of it, if asked a little early); its online vCPUs.
        ``vm-not-running`` if it left the host meanwhile (its job ended)."""
        self.advance(t)
        if self._vms.get(vm.name) is not vm:
            raise HotplugRefused(ErrorCode.VM_NOT_RUNNING, f"The machine '{vm.name}' is not running any more")
        if vm.step(t, force=True):
            self._committed = None
            self._resizing.discard(vm)
            self._settle()
        return vm.online_vcpus

    # --- time -----------------------------------------------------------------------------------------------

    def advance(self, t: float) -> None:
        """Integrate every VM up to ``t``, starting and ending jobs and completing resize steps on the way."""
        cores = float(self.cores)
        while self.time < t - EPSILON_S:
            now = self.time
            end = min(t, now + self.max_step_s, self._next_end)
            if self._next is not None and not self._queue:
                end = min(end, self.origin + self._next.arrival_s)
            for vm in self._resizing:
                resize = vm.resize
                if resize is not None and resize.next_at < end:
                    end = resize.next_at
            wanted = 0.0
            for vm in self._vms.values():
                override = vm.demand_override
                demand = vm.workload.demand(now) if override is None else override
                memory = vm.memory
                if memory is not None and not memory.quiet:
                    demand, killed = vm.observe_memory(now, demand)
                    if killed:
                        self._oom_killed(vm)
                vm.demand_now = demand
                online = vm.online_vcpus
                wanted += demand if demand < online else online
            share = cores / wanted if wanted > cores else 1.0
            for state in self._job_of.values():
                if state.remaining is not None:
                    vm = self._vms[state.job.name]
                    demand = vm.demand_now
                    rate = _rate(demand, vm.online_vcpus, share) * vm.progress
                    if rate > 0 and now + state.remaining / rate < end:
                        end = now + state.remaining / rate
            dt = end - now
            used = 0.0
            for vm in self._vms.values():
                demand = vm.demand_now
                online = vm.online_vcpus
                ran = (demand if demand < online else online) * share
                vm.account(dt, demand, ran)
                stall = vm.stall
                if stall is not None:
                    # Checked as it integrates (no polling): demand above its vCPUs is some task waiting.
                    fired = stall.account(now, end, demand > online)
                    if fired is not None:
                        self.fired.append((vm.name, fired))
                memory = vm.memory
                if memory is not None and not memory.quiet:
                    memory.accumulate(dt)
                used += ran
            self.used_core_seconds += used * dt
            if wanted > cores:
                self.host_wait_core_seconds += (wanted - cores) * dt
            for state in self._job_of.values():
                if state.remaining is not None:
                    vm = self._vms[state.job.name]
                    state.remaining -= _rate(vm.demand_now, vm.online_vcpus, share) * vm.progress * dt
            self.time = end
            self._settle()

    def _watch(self, vm: SimVm) -> None:
        if self.psi_trigger is not None and vm.stall is None:
            vm.stall = StallTrigger(*self.psi_trigger)

    def take_fired(self) -> list[tuple[str, float]]:
        """The PSI triggers that fired since last asked: (VM, when), in order."""
        fired, self.fired = self.fired, []
        return fired

    def next_stall_check(self) -> float | None:
        """The next moment the host must be integrated to for a trigger to fire on time (None: no VM is watched): a
        VM whose demand is above its vCPUs now, when its trigger is due; else when some VM's demand next steps (its
        workload's next phase, or the trace's next value), so that a step above its vCPUs is seen as it happens. A
        drift of the ripple across a VM's vCPUs between steps is seen at the next integration, whenever that comes
        (a stats request, at most an interval later)."""
        now = self.time
        earliest: float | None = None
        for vm in self._vms.values():
            stall = vm.stall
            if stall is None:
                continue
            # The demand now, not the last step's: a step is integrated at the demand its start had.
            if vm.demand(now) > vm.online_vcpus:
                at = stall.due(now)
            elif vm.demand_override is not None:
                continue  # a pinned load that fits never stalls
            else:
                at = vm.workload.next_change(now)
            if earliest is None or at < earliest:
                earliest = at
        return earliest

    def _settle(self) -> None:
        """Everything due at ``self.time``: resize steps, jobs that end, arrivals, and the starts they allow."""
        now = self.time
        for vm in list(self._resizing):
            if vm.step(now):
                self._committed = None
            if vm.resize is None:
                self._resizing.discard(vm)
        ended = [
            state
            for state in self._job_of.values()
            if (state.end_at is not None and state.end_at <= now + EPSILON_S)
            or (state.remaining is not None and state.remaining <= _WORK_EPSILON_S)
        ]
        for state in ended:
            self._finish(state, now)
        while self._next is not None and self.origin + self._next.arrival_s <= now + EPSILON_S:
            job = self._next
            self._next = next(self._arrivals, None)
            state = _JobState(job, self.origin + job.arrival_s)
            self._states.append(state)
            if job.requested_vcpus > self.capacity_vcpus or not self._memory_fits(job, 0):
                self._reject(state)
            else:
                self._queue.append(state)
        if self._queue:
            self._start_waiting(now)

    def _start_waiting(self, now: float) -> None:
        committed = self.committed_vcpus
        memory = self.committed_memory_bytes if self.memory_capacity_bytes is not None else 0
        while self._queue:
            head = self._queue[0]
            job = head.job
            if job.requested_vcpus > self.capacity_vcpus or job.name in self._vms or not self._memory_fits(job, 0):
                self._reject(self._queue.popleft())  # it would never start, and would block the rest for ever
                continue
            if committed + job.requested_vcpus > self.capacity_vcpus or not self._memory_fits(job, memory):
                return
            self._queue.popleft()
            committed += job.requested_vcpus
            memory += job.requested_memory_bytes
            self._start(head, now)

    def _memory_fits(self, job: Job, committed: int) -> bool:
        """Whether ``job``'s memory fits beside ``committed`` bytes (always, when the host's memory is not limited)."""
        capacity = self.memory_capacity_bytes
        return capacity is None or committed + job.requested_memory_bytes <= capacity

    def _start(self, state: _JobState, now: float) -> None:
        job = state.job
        state.start = now
        if job.work_s is not None:
            state.remaining = job.work_s
        if job.lifetime_s is not None:
            state.end_at = now + job.lifetime_s
            self._next_end = min(self._next_end, state.end_at)
        self._vms[job.name] = SimVm(
            name=job.name,
            max_vcpus=job.max_vcpus,
            online_vcpus=job.requested_vcpus,
            workload=Workload(job.profile, job.size, job.seed, now),
            last_time=now,
            memory=VmMemory.sized(job.requested_memory_bytes),
        )
        self._watch(self._vms[job.name])
        self._job_of[job.name] = state
        self._committed = None
        self.jobs_started += 1

    def _finish(self, state: _JobState, now: float) -> None:
        name = state.job.name
        state.end = now
        vm = self._vms.pop(name)
        self._resizing.discard(vm)
        del self._job_of[name]
        self._committed = None
        self.jobs_finished += 1
        if state.end_at is not None:
            ends = [s.end_at for s in self._job_of.values() if s.end_at is not None]
            self._next_end = min(ends, default=float("inf"))

    def _oom_killed(self, vm: SimVm) -> None:
        """The guest's OOM killer took ``vm``'s job: a work job starts its work again."""
        self.oom_kills += 1
        state = self._job_of.get(vm.name)
        if state is not None:
            state.oom_kills += 1
            if state.remaining is not None:
                state.remaining = state.job.work_s

    def _reject(self, state: _JobState) -> None:
        state.rejected = True
        self.jobs_rejected += 1


def _rate(demand: float, online: int, share: float) -> float:
    """Seconds of work a job does per second: the CPU it got over the CPU it wanted (1 when it wants none)."""
    if demand <= 0:
        return 1.0
    return (demand if demand < online else online) * share / demand


def fixed_sizes(
    jobs: Iterable[Job],
    *,
    cores: int,
    capacity_vcpus: int,
    span_s: float,
    resident: Sequence[SimVm] = (),
    max_step_s: float = MAX_INTEGRATION_STEP_S,
    memory_capacity_bytes: int | None = None,
) -> Outcome:
    """The same arrivals on the same host for ``span_s`` seconds with no resize at all: every VM keeps the size it
    asked for (``resident``: fresh VMs at their boot size, running from the start; ``memory_capacity_bytes``: the
    memory its jobs wait for, None: not limited). Pure."""
    host = Host(
        cores,
        capacity_vcpus,
        jobs=jobs,
        resident=resident,
        origin=0.0,
        max_step_s=max_step_s,
        memory_capacity_bytes=memory_capacity_bytes,
    )
    host.advance(span_s)
    return host.outcome()
