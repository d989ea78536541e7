"""What a simulated run is made of, from the simulator's options: its resident VMs, the jobs that arrive and its
host's cores and capacity. The simulator service builds its host from it, and ``hotplug up`` builds the same
run again, with fixed sizes, to measure the live run against. Pure, but for reading the trace and arrivals files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.simulator.cloud import MiniCloud, SimVm, load_trace
from services.simulator.jobs import Job, load_arrivals, poisson_arrivals
from services.simulator.stall import DEFAULT_STALL_S, DEFAULT_WINDOW_S
from shared.config.schema import VMS, HostRule, SimulatorSettings
from shared.pool import host_capacity

_SETTINGS = SimulatorSettings()  # the defaults, declared once with the flags' and the file's settings


@dataclass(frozen=True)
class SimulatorConfig:
    vms: int = VMS
    seed: int = _SETTINGS.seed
    hotplug_delay_s: float = _SETTINGS.hotplug_delay
    profiles: tuple[str, ...] = ()
    max_vcpus: int | None = None
    # A replay CSV: one VM per trace VM, its demand following the recording (instead of the seeded profiles).
    trace: Path | None = None
    # With a trace: keep only the first this many of its VMs (by name); None keeps them all.
    trace_vms: int | None = None
    # The host's physical cores; None: the resident VMs' maximums together, so that they never contend.
    host_cores: int | None = None
    # Jobs arriving per hour (a seeded Poisson process), or from a file; 0 and None: none.
    arrivals_rate: float = _SETTINGS.arrivals_rate
    arrivals_file: Path | None = None
    # The arrivals' own seed; None: ``seed``.
    arrivals_seed: int | None = None
    # The config file's [[host]] rules, which set the host's capacity (shared.pool).
    host_rules: tuple[HostRule, ...] = ()
    # The host's RAM, in bytes, and how far its VMs' memory may be committed beyond it (1.0: not at all): jobs then
    # wait for memory too, and a memory grow past it is refused. None: memory is counted but never limits.
    host_memory_bytes: int | None = None
    memory_overcommit: float = 1.0
    # Each guest's PSI trigger on CPU (stall_s, window_s of simulated time), said on ``hotplug.sim.<host>.pressure``
    # as it fires; the guest agent's default (100 ms within 1 s). None: no guest has one.
    psi_trigger: tuple[float, float] | None = (DEFAULT_STALL_S, DEFAULT_WINDOW_S)

    def __post_init__(self) -> None:
        if self.arrivals_rate < 0:
            raise ValueError(f"the arrival rate must not be negative, got {self.arrivals_rate}")
        if self.arrivals_rate > 0 and self.arrivals_file is not None:
            raise ValueError("jobs arrive at a rate or from a file, not both")
        if self.host_cores is not None and self.host_cores < 1:
            raise ValueError(f"the host needs at least one core, got {self.host_cores}")
        if self.host_memory_bytes is not None and self.host_memory_bytes <= 0:
            raise ValueError(f"the host's memory must be positive, got {self.host_memory_bytes}")
        if not self.memory_overcommit > 0:
            raise ValueError(f"the memory overcommit must be positive, got {self.memory_overcommit}")

    @property
    def has_arrivals(self) -> bool:
        return self.arrivals_rate > 0 or self.arrivals_file is not None


def resident_vms(config: SimulatorConfig, start: float, now: float | None = None) -> list[SimVm]:
    """The VMs running from the run's ``start``: the seeded fleet, or one per trace VM (counted from ``now``)."""
    if config.trace is not None:
        series = sorted(load_trace(config.trace), key=lambda s: s.name)[: config.trace_vms]
        return list(MiniCloud.from_trace(series, start, now).vms.values())
    cloud = MiniCloud.generate(
        config.vms, config.seed, start if now is None else now, list(config.profiles) or None, config.max_vcpus
    )
    return list(cloud.vms.values())


def arrivals(config: SimulatorConfig) -> Iterator[Job]:
    """The jobs that arrive, in arrival order (times from the run's start); endless at a rate."""
    seed = config.seed if config.arrivals_seed is None else config.arrivals_seed
    if config.arrivals_file is not None:
        return iter(load_arrivals(config.arrivals_file, seed))
    return poisson_arrivals(config.arrivals_rate, seed)


def host_cores(config: SimulatorConfig, resident: Sequence[SimVm]) -> int:
    """The host's cores: as configured, or what the resident VMs may use at most (they never contend)."""
    if config.host_cores is not None:
        return config.host_cores
    return max(1, sum(vm.max_vcpus for vm in resident))


def capacity(rules: Sequence[HostRule], host: str, cores: int) -> int:
    """The vCPUs the host may commit: its [[host]] rule's reading of its cores (``shared.pool``)."""
    return host_capacity(rules, host, cores).capacity_vcpus


def memory_capacity(config: SimulatorConfig) -> int | None:
    """The bytes of memory the host may commit: its RAM times the overcommit; None when its RAM is not given."""
    if config.host_memory_bytes is None:
        return None
    return int(config.host_memory_bytes * config.memory_overcommit)


def too_large(jobs: Sequence[Job], capacity_vcpus: int) -> list[Job]:
    """Jobs of a file that ask for more than the whole capacity: the host rejects them when they arrive."""
    return [job for job in jobs if job.requested_vcpus > capacity_vcpus]
