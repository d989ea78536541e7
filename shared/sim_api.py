"""Request/reply contracts of the simulated mini-cloud (``hotplug.sim.<host>.<op>``).

The simulator plays a hypervisor host: the collector's ``simulator`` source asks it for cumulative CPU
counters, as it would read /proc or psutil on a real host, and the actuator's ``simulator`` driver asks
it to plug or unplug one vCPU, as it would call VBoxManage or QMP.

Pressure (``SimPressure`` on ``hotplug.sim.<host>.pressure``) is published, not asked for: each guest's PSI
trigger on CPU, said the moment it fires.

Memory (``SimMemory`` in each VM's counters, ``MemoryResizeRequest`` on ``hotplug.sim.<host>.memory``) came later:
every memory field has a default, so a reader built before it decodes the replies as it did.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from shared.messages import Cores, VmName


class SimMemory(msgspec.Struct, frozen=True, kw_only=True):
    """A simulated VM's memory now, in bytes, as a hypervisor (size, limits) and its guest (the rest) would tell it.

    ``available_bytes`` is MemAvailable: ``size_bytes`` less the kernel's own part and ``used_bytes`` (the page cache
    counts as available, being given up under pressure). ``demand_bytes`` is the anonymous memory its work wants,
    ``swap_bytes`` the part of it swapped out (demand beyond RAM); beyond RAM and swap space the guest kills the job.
    Cumulative: ``swap_in_bytes``, ``stall_seconds`` (PSI memory some, total) and ``oom_kills``; ``*_now`` figures are
    over the simulator's last integration step (at most 0.25 s)."""

    size_bytes: int
    requested_bytes: int  # the target last asked for (size_bytes until it gets there)
    min_bytes: int
    max_bytes: int
    step_bytes: int
    used_bytes: int = 0
    cache_bytes: int = 0
    available_bytes: int = 0
    demand_bytes: int = 0
    swap_bytes: int = 0
    swap_space_bytes: int = 0
    swap_in_bytes: float = 0.0
    swap_in_bytes_per_s_now: float = 0.0
    stall_seconds: float = 0.0
    psi_memory_some_now: float = 0.0
    oom_kills: int = 0

    @property
    def committed_bytes(self) -> int:
        """What the host holds for it: its size, or the target it is growing to (a grow under way will land)."""
        return max(self.size_bytes, self.requested_bytes)


class SimVmCounters(msgspec.Struct, frozen=True, kw_only=True):
    vm: VmName
    online_vcpus: int
    min_vcpus: int
    max_vcpus: int
    # Cumulative busy core-seconds, in total and per vCPU slot (len = max_vcpus); a slot offline keeps its count.
    cpu_seconds: float
    per_vcpu_seconds: list[float]
    # Cumulative core-seconds of demand that found no free vCPU (the run-queue excess, integrated).
    waiting_core_seconds: float
    profile: str
    # vCPUs plugged or unplugged since the simulator started: the hypervisor's own count, against which an
    # audit checks that no command took effect twice.
    hotplug_ops: int = 0
    # Cumulative core-seconds its runnable vCPUs waited for a host core (the host had more runnable than cores):
    # the steal time a guest would see, apart from ``waiting_core_seconds`` (demand above its own vCPUs).
    host_wait_core_seconds: float = 0.0
    # Its memory; None from a simulator that models none (one built before memory was).
    memory: SimMemory | None = None


class SimHost(msgspec.Struct, frozen=True, kw_only=True):
    """The simulated host: its cores, the capacity it admits VMs against, and the jobs waiting to start."""

    cores: int
    capacity_vcpus: int
    # Cumulative core-seconds that running vCPUs could not run for want of a free core (more runnable than cores).
    host_wait_core_seconds: float = 0.0
    waiting_vms: int = 0
    waiting_vcpus: int = 0
    next_waiting_vcpus: int | None = None
    jobs_started: int = 0
    jobs_finished: int = 0
    # Online vCPUs of the running VMs, plus vCPUs being plugged: what the capacity is judged against.
    committed_vcpus: int = 0
    # Cumulative core-seconds the VMs ran, and the cores they run now.
    used_core_seconds: float = 0.0
    used_cores: float = 0.0
    # Jobs refused at arrival because they asked for more than the host's whole capacity.
    jobs_rejected: int = 0
    # Memory: what the running VMs hold (the larger of each one's size and the target it is growing to), and what
    # the host may commit (its RAM times the overcommit); None: not limited (no host memory was configured).
    committed_memory_bytes: int = 0
    memory_capacity_bytes: int | None = None
    # The host's RAM, as a hypervisor reports it (None: not configured); the loop's memory capacity is the [[host]]
    # rule's reading of it, as its capacity in vCPUs is of ``cores``.
    memory_bytes: int | None = None
    # Jobs (or resident VMs' work) the guests' OOM killer took since the start.
    oom_kills: int = 0


class SimJob(msgspec.Struct, frozen=True, kw_only=True):
    """One job that arrived at the simulated host, and what became of it. Times are seconds from the run's start;
    ``start_s`` None: still waiting; ``end_s`` None: still running (or waiting)."""

    name: VmName
    profile: str
    requested_vcpus: int
    max_vcpus: int
    arrival_s: float
    lifetime_s: float | None = None
    work_s: float | None = None  # seconds of work at full demand
    start_s: float | None = None
    end_s: float | None = None
    work_done_s: float = 0.0  # of work_s
    rejected: bool = False  # asked for more than the host's whole capacity: never started
    requested_memory_bytes: int = 0
    oom_kills: int = 0  # times the guest's OOM killer took it (a work job starts its work again each time)

    @property
    def wait_s(self) -> float | None:
        return None if self.start_s is None else self.start_s - self.arrival_s

    @property
    def slowdown(self) -> float | None:
        """A finished work job's run time over its work: 1 when it always got the CPU it wanted."""
        if self.work_s is None or self.start_s is None or self.end_s is None:
            return None
        return (self.end_s - self.start_s) / self.work_s


class StatsReply(msgspec.Struct, frozen=True, kw_only=True):
    time: float
    vms: list[SimVmCounters]  # the running VMs
    host: SimHost | None = None


class JobsReply(msgspec.Struct, frozen=True, kw_only=True):
    """``hotplug.sim.<host>.jobs``: every job that arrived, in arrival order, and the host's totals."""

    time: float
    origin: float  # the shared clock's time of the run's start, from which job times count
    host: SimHost
    jobs: list[SimJob]


class HotplugRequest(msgspec.Struct, frozen=True, kw_only=True):
    vm: VmName
    op: Literal["plug", "unplug"]


class HotplugReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    online_vcpus: int | None = None
    error_code: str | None = None
    error: str | None = None


class MemoryResizeRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``hotplug.sim.<host>.memory``: take ``vm``'s memory to ``target_bytes`` (a multiple of its ``step_bytes``,
    within its ``min_bytes``..``max_bytes``). Answered once taken; the size moves in the guest's own time."""

    vm: VmName
    target_bytes: int


class MemoryResizeReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    size_bytes: int | None = None  # the size when the request was taken
    requested_bytes: int | None = None
    done_in_s: float | None = None  # simulated seconds until the size reaches the target
    error_code: str | None = None
    error: str | None = None


# A simulated guest's PSI trigger on CPU, by default: the guest agent's (100 ms of stall within 1 s), in simulated time.
PSI_STALL_S = 0.1
PSI_WINDOW_S = 1.0


class SimPressure(msgspec.Struct, frozen=True, kw_only=True):
    """``hotplug.sim.<host>.pressure`` (published): the PSI trigger ``some stall_s window_s`` of ``vm``'s guest
    fired at ``time`` (its demand exceeded its online vCPUs that long within the window); at most once a window."""

    vm: VmName
    time: float
    stall_s: float
    window_s: float


class LoadRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Pin a VM's demand (in cores) until cleared with ``demand_cores: null``: a load step for tests and demos."""

    vm: VmName
    demand_cores: Cores | None


class LoadReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    error: str | None = None
