"""The mini-cloud model: VMs whose demand follows a workload and whose vCPUs change by hot-plug.

Pure and clock-free: every call takes the simulated time. A VM never uses more cores than it has online;
the rest of its demand waits and is counted as pressure. Hot-plug follows VirtualBox's rules: one vCPU
per call, CPU 0 is never removed, never above the maximum, and one operation at a time per VM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from services.decider.traces import TraceError, VmSeries, load_csv
from services.simulator.workloads import PROFILES, Demand, TraceWorkload, Workload
from shared.errors import UsageError
from shared.messages import ErrorCode
from shared.sim_api import SimVmCounters

MAX_INTEGRATION_STEP_S = 0.25
# (requested vCPUs at boot, hot-plug maximum) of generated VMs, in turn.
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
class SimVm:
    name: str
    max_vcpus: int
    online_vcpus: int
    workload: Demand
    min_vcpus: int = 1
    last_time: float = 0.0
    demand_override: float | None = None
    busy_until: float = float("-inf")
    cpu_seconds: float = 0.0
    waiting_core_seconds: float = 0.0
    hotplug_ops: int = 0
    per_vcpu_seconds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.min_vcpus <= self.online_vcpus <= self.max_vcpus:
            raise ValueError(f"{self.name}: need 1 <= min <= online <= max")
        self.per_vcpu_seconds = [0.0] * self.max_vcpus

    def demand(self, t: float) -> float:
        return self.demand_override if self.demand_override is not None else self.workload.demand(t)

    def advance(self, t: float) -> None:
        """Integrate CPU use from the last call up to ``t``."""
        while self.last_time < t:
            dt = min(MAX_INTEGRATION_STEP_S, t - self.last_time)
            demand = self.demand(self.last_time)
            used = min(demand, float(self.online_vcpus))
            self.cpu_seconds += used * dt
            self.waiting_core_seconds += (demand - used) * dt
            # The guest scheduler spreads runnable work over all online vCPUs.
            share = used / self.online_vcpus * dt
            for cpu in range(self.online_vcpus):
                self.per_vcpu_seconds[cpu] += share
            self.last_time += dt

    def counters(self) -> SimVmCounters:
        return SimVmCounters(
            vm=self.name,
            online_vcpus=self.online_vcpus,
            min_vcpus=self.min_vcpus,
            max_vcpus=self.max_vcpus,
            cpu_seconds=self.cpu_seconds,
            per_vcpu_seconds=list(self.per_vcpu_seconds),
            waiting_core_seconds=self.waiting_core_seconds,
            profile=self.workload.profile,
            hotplug_ops=self.hotplug_ops,
        )

    def check_hotplug(self, op: str, t: float) -> None:
        """Raise HotplugRefused when VirtualBox would refuse ``op`` now."""
        if t < self.busy_until:
            raise HotplugRefused(ErrorCode.UNKNOWN, f"another CPU operation on '{self.name}' is in progress")
        if op == "plug" and self.online_vcpus >= self.max_vcpus:
            raise HotplugRefused(
                ErrorCode.CPU_ID_OUT_OF_RANGE, f"CPU id exceeds number of possible CPUs [0:{self.max_vcpus - 1}]"
            )
        if op == "unplug" and self.online_vcpus <= 1:
            raise HotplugRefused(ErrorCode.CPU0, "It is not possible to detach CPU 0")

    def begin_hotplug(self, op: str, t: float, delay_s: float) -> float:
        """Start ``op``; returns the time it completes. Call :meth:`finish_hotplug` then."""
        self.check_hotplug(op, t)
        self.busy_until = t + delay_s
        return self.busy_until

    def finish_hotplug(self, op: str, t: float) -> int:
        self.advance(t)
        self.online_vcpus += 1 if op == "plug" else -1
        self.hotplug_ops += 1
        self.busy_until = float("-inf")
        return self.online_vcpus


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

    def snapshot(self, t: float) -> list[SimVmCounters]:
        for vm in self.vms.values():
            vm.advance(t)
        return [vm.counters() for vm in self.vms.values()]
