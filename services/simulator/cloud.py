"""The mini-cloud's VMs: demand that follows a workload, vCPUs that change by hot-plug, and the fleet a run starts
with (seeded, or from a trace). The host they share (cores, capacity, arriving jobs) is ``host.py``.

Pure and clock-free: every call takes the simulated time. A VM never uses more cores than it has online;
the rest of its demand waits and is counted as pressure. Hot-plug follows VirtualBox's rules: one vCPU
per call, CPU 0 is never removed, never above the maximum, and one operation at a time per VM.

Its memory (``services.simulator.vm_memory``) moves only when asked; while the guest swaps, the share of time its
tasks wait for page-ins is taken off its CPU demand (a task blocked on a read neither runs nor progresses).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from services.simulator.memory import MemoryCurve
from services.simulator.stall import StallTrigger
from services.simulator.vm_memory import MEMORY_PER_VCPU_BYTES, VmMemory
from services.simulator.workloads import PROFILES, Demand, TraceWorkload, Workload
from shared.errors import UsageError
from shared.messages import ErrorCode
from shared.sim_api import SimVmCounters
from shared.traces import TraceError, VmSeries, load_csv

MAX_INTEGRATION_STEP_S = 0.25
# Times this close count as equal: float sums of steps must not leave an event a hair in the future.
EPSILON_S = 1e-9
# (requested vCPUs at boot, hot-plug maximum) of generated VMs, in turn; each asks for MEMORY_PER_VCPU_BYTES per
# requested vCPU (4, 8, 16, 8 GiB), boots with it and may give it back down to its boot RAM.
SIZES = ((2, 4), (4, 8), (8, 16), (4, 8))


# What a VM name and size must be to travel in a MetricSample (shared.messages VmName, VcpuCount).
_VM_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
MAX_TRACE_VCPUS = 1024


def load_trace(path: Path) -> list[VmSeries]:
    """The VMs of a replay CSV (``time_s,vm,demand_vcpus[,max_vcpus]``), read by the replay's own loader and
    checked for what the live loop needs; anything wrong raises :class:`TraceError` with a one-line message."""
    series = load_csv([path])
    if not series:
        raise TraceError(f"{path}: no rows (expected a header time_s,vm,demand_vcpus[,max_vcpus] and rows)")
    for s in series:
        if not _VM_NAME.match(s.name):
            raise TraceError(f"{path}: VM name {s.name!r} is empty, too long or has control characters")
        if not 1 <= s.max_vcpus <= MAX_TRACE_VCPUS:
            raise TraceError(f"{path}: VM {s.name!r} has max_vcpus {s.max_vcpus}; it must be 1 to {MAX_TRACE_VCPUS}")
    return series


class HotplugRefused(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Resize:
    """A resize under way: one vCPU every ``step_s`` towards ``target`` (VirtualBox plugs one per call); the next
    step completes at ``next_at``."""

    target: int
    step_s: float
    next_at: float


@dataclass(eq=False)
class SimVm:
    name: str
    max_vcpus: int
    online_vcpus: int
    workload: Demand
    min_vcpus: int = 1
    last_time: float = 0.0
    demand_override: float | None = None
    cpu_seconds: float = 0.0
    waiting_core_seconds: float = 0.0
    host_wait_core_seconds: float = 0.0
    hotplug_ops: int = 0
    resize: Resize | None = None
    memory: VmMemory | None = None
    # Its guest's PSI trigger on CPU, where the host watches for stalls (None: not watched).
    stall: StallTrigger | None = None
    # The share of a CPU second that goes to its job's work: 1, less what memory stalls take, 0 while its job
    # starts again after an OOM kill.
    progress: float = 1.0
    _memory_curve: MemoryCurve | None = field(default=None, repr=False)
    # What it asked and ran over the last integration step, in cores.
    demand_now: float = 0.0
    used_now: float = 0.0
    # Busy seconds per vCPU slot, kept lazily: the guest spreads its work evenly over its online vCPUs, so one
    # running total per online vCPU (_share) and, per slot, what it had when it went offline (_slot_done) and
    # the total when it came online (_slot_mark) give every slot's count without a loop per step.
    _share: float = field(default=0.0, repr=False)
    _slot_done: list[float] = field(default_factory=list, repr=False)
    _slot_mark: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.min_vcpus <= self.online_vcpus <= self.max_vcpus:
            raise ValueError(f"{self.name}: need 1 <= min <= online <= max")
        self._slot_done = [0.0] * self.max_vcpus
        self._slot_mark = [0.0] * self.max_vcpus

    @property
    def per_vcpu_seconds(self) -> list[float]:
        """Cumulative busy seconds of each vCPU slot (len = max_vcpus); a slot offline keeps its count."""
        online, share, done, mark = self.online_vcpus, self._share, self._slot_done, self._slot_mark
        return [done[i] + (share - mark[i]) for i in range(online)] + done[online:]

    def demand(self, t: float) -> float:
        return self.demand_override if self.demand_override is not None else self.workload.demand(t)

    def account(self, dt: float, demand: float, ran: float) -> None:
        """Count ``dt`` seconds in which it wanted ``demand`` cores and ran ``ran`` (at most its online vCPUs):
        demand above its vCPUs is its own pressure, runnable vCPUs that found no host core are host wait."""
        online = self.online_vcpus
        runnable = demand if demand < online else float(online)
        self.cpu_seconds += ran * dt
        self.waiting_core_seconds += (demand - runnable) * dt
        self.host_wait_core_seconds += (runnable - ran) * dt
        self._share += ran / online * dt
        self.demand_now = demand
        self.used_now = ran

    def observe_memory(self, t: float, demand: float) -> tuple[float, bool]:
        """Its memory at ``t`` (the workload's memory demand taken into the guest) and what that leaves of its CPU
        ``demand``: (CPU demand, whether the OOM killer struck). Sets :attr:`progress`. Without memory: unchanged."""
        memory = self.memory
        if memory is None:
            return demand, False
        curve = self._memory_curve
        if curve is None:
            self._memory_curve = curve = MemoryCurve(self.workload, memory.requested_bytes)
        anon, cache = curve.at(t)
        killed = memory.observe(t, anon, cache)
        stall = memory.stall_now
        if memory.restarting(t):
            self.progress = 0.0
        else:
            self.progress = 1.0 - stall
        if stall:
            demand *= 1.0 - stall
        return demand, killed

    def advance(self, t: float) -> None:
        """Integrate CPU use (and memory) from the last call up to ``t``, alone on a host with a core for every vCPU
        (a :class:`services.simulator.host.Host` integrates its VMs together instead)."""
        while self.last_time < t:
            dt = min(MAX_INTEGRATION_STEP_S, t - self.last_time)
            demand = self.demand(self.last_time)
            memory = self.memory
            if memory is not None and not memory.quiet:
                demand, _ = self.observe_memory(self.last_time, demand)
                memory.accumulate(dt)
            self.account(dt, demand, min(demand, float(self.online_vcpus)))
            self.last_time += dt

    def set_online(self, vcpus: int) -> None:
        """Bring its online count to ``vcpus`` (one slot at a time, so each slot's count carries on)."""
        while self.online_vcpus < vcpus:
            self._slot_mark[self.online_vcpus] = self._share
            self.online_vcpus += 1
            self.hotplug_ops += 1
        while self.online_vcpus > vcpus:
            self.online_vcpus -= 1
            slot = self.online_vcpus
            self._slot_done[slot] += self._share - self._slot_mark[slot]
            self.hotplug_ops += 1

    @property
    def plugging(self) -> int:
        """vCPUs a resize under way has yet to plug (committed to it already)."""
        return max(0, self.resize.target - self.online_vcpus) if self.resize is not None else 0

    def counters(self, t: float | None = None) -> SimVmCounters:
        """Its counters, its memory as at ``t`` (default: the time it was integrated to)."""
        memory = self.memory
        if t is None:
            t = self.last_time
        if memory is not None and memory.quiet:
            self.observe_memory(t, 0.0)  # the host skipped it: take its figures now (nothing else can change)
        return SimVmCounters(
            vm=self.name,
            online_vcpus=self.online_vcpus,
            min_vcpus=self.min_vcpus,
            max_vcpus=self.max_vcpus,
            cpu_seconds=self.cpu_seconds,
            per_vcpu_seconds=self.per_vcpu_seconds,
            waiting_core_seconds=self.waiting_core_seconds,
            profile=self.workload.profile,
            hotplug_ops=self.hotplug_ops,
            host_wait_core_seconds=self.host_wait_core_seconds,
            memory=None if memory is None else memory.figures(t),
        )

    def check_resize(self, target: int) -> None:
        """Raise HotplugRefused when VirtualBox would refuse to take it to ``target`` vCPUs now."""
        if self.resize is not None:
            raise HotplugRefused(ErrorCode.UNKNOWN, f"another CPU operation on '{self.name}' is in progress")
        if target > self.max_vcpus:
            raise HotplugRefused(
                ErrorCode.CPU_ID_OUT_OF_RANGE, f"CPU id exceeds number of possible CPUs [0:{self.max_vcpus - 1}]"
            )
        if target < 1:
            raise HotplugRefused(ErrorCode.CPU0, "It is not possible to detach CPU 0")

    def memory_device(self) -> VmMemory:
        """Its memory, or HotplugRefused when it has none to move."""
        if self.memory is None:
            raise HotplugRefused(ErrorCode.HOTPLUG_DISABLED, f"'{self.name}' has no memory device to resize")
        return self.memory

    def check_memory_resize(self, target: int) -> VmMemory:
        """Its memory, or HotplugRefused (``out-of-bounds``) when the device would refuse ``target`` bytes."""
        memory = self.memory_device()
        reason = memory.refusal(target)
        if reason is not None:
            raise HotplugRefused(ErrorCode.OUT_OF_BOUNDS, f"'{self.name}': {reason}")
        return memory

    def begin_resize(self, target: int, t: float, step_s: float) -> float:
        """Start taking it to ``target`` vCPUs, one every ``step_s``; returns when the last step completes.
        :meth:`step` carries it out as time passes."""
        self.check_resize(target)
        if target == self.online_vcpus:
            return t
        self.resize = Resize(target, step_s, t + step_s)
        return t + step_s * abs(target - self.online_vcpus)

    def step(self, t: float, force: bool = False) -> bool:
        """Complete the steps of its resize due by ``t`` (``force``: all that remain); True if any did."""
        resize = self.resize
        changed = False
        while resize is not None and (force or resize.next_at <= t + EPSILON_S):
            self.set_online(self.online_vcpus + (1 if resize.target > self.online_vcpus else -1))
            changed = True
            if self.online_vcpus == resize.target:
                self.resize = resize = None
            else:
                resize.next_at += resize.step_s
        return changed


class MiniCloud:
    def __init__(self, vms: list[SimVm]) -> None:
        self.vms = {vm.name: vm for vm in vms}

    @classmethod
    def generate(
        cls, count: int, seed: int, start: float, profiles: list[str] | None = None, max_vcpus: int | None = None
    ) -> MiniCloud:
        """``count`` VMs cycling through the AI-like profiles, each booted at its requested size and able
        to grow to twice that (the hot-plug maximum it was prepared with)."""
        mix = profiles or ["training", "inference", "notebook", "batch"]
        for name in mix:
            if name not in PROFILES:
                raise UsageError(f"unknown workload profile {name!r}; choose from {', '.join(PROFILES)}")
        vms = []
        for i in range(count):
            requested, maximum = SIZES[i % len(SIZES)] if max_vcpus is None else (max(1, max_vcpus // 2), max_vcpus)
            profile = mix[i % len(mix)]
            workload = Workload(profile, maximum, seed=seed * 7919 + i, start=start)
            vms.append(
                SimVm(
                    name=f"vm-{i + 1:02d}",
                    max_vcpus=maximum,
                    online_vcpus=requested,
                    workload=workload,
                    last_time=start,
                    memory=VmMemory.sized(MEMORY_PER_VCPU_BYTES * requested),
                )
            )
        return cls(vms)

    @classmethod
    def from_trace(cls, series: list[VmSeries], start: float, now: float | None = None) -> MiniCloud:
        """One VM per series, its demand following the trace from ``start`` (see :class:`TraceWorkload`).

        The file's earliest time is mapped to ``start`` (a file that begins at 0 plays its time 0 at the run's
        start; one of POSIX timestamps works too). Each VM boots at its maximum, as a VM starts in replay, so a
        live rehearsal and ``hotplug replay`` of the same file begin alike. CPU is counted from ``now`` (default
        ``start``): a simulator started after the run's epoch has no use to account for before it.
        """
        if not series:
            raise ValueError("the trace has no VMs")
        timed = [(s, s.times if s.times is not None else [i * s.step_s for i in range(len(s.demand))]) for s in series]
        origin = min(times[0] for _, times in timed)
        # The whole file plays once per period: up to the last value of any VM, plus that VM's step (its last
        # value lasts one step, as in replay).
        period = max(times[-1] + s.step_s for s, times in timed) - origin
        vms = [
            SimVm(
                name=s.name,
                max_vcpus=s.max_vcpus,
                online_vcpus=s.max_vcpus,
                min_vcpus=s.min_vcpus,
                workload=TraceWorkload(times, s.demand, origin, period, start),
                last_time=start if now is None else now,
                memory=VmMemory.sized(MEMORY_PER_VCPU_BYTES * s.max_vcpus),
            )
            for s, times in timed
        ]
        return cls(vms)

    def get(self, name: str) -> SimVm:
        try:
            return self.vms[name]
        except KeyError:
            raise HotplugRefused(
                ErrorCode.VM_NOT_FOUND, f"Could not find a registered machine named '{name}'"
            ) from None
