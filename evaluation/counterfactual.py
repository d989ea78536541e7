"""The run ``hotplug up`` just made, again with fixed sizes: the same resident VMs and arriving jobs on the same
host for the same span, with no resize at all (each VM keeps what it asked for, as in today's IaaS). Its jobs'
waits are what the live run's are measured against. Pure, but for reading the trace and arrivals files.

The simulator child is rebuilt from what ``up`` passed it (``child_argv``: VMs, seed, trace, host cores,
arrivals), and, for what ``up`` leaves to the child's own ``[simulator]`` section (profiles, max_vcpus, an
arrivals seed, and host cores or arrivals ``up`` was not given), from the same config file. The host's cores and
capacity are those the simulator reported at the end of the run.
"""

from __future__ import annotations

from pathlib import Path

from services.simulator import scenario
from services.simulator.host import Outcome, fixed_sizes
from services.simulator.jobs import arrivals_until
from services.simulator.scenario import SimulatorConfig
from shared.config.schema import ConfigFile, SimulatorSection, memory_bytes_of
from shared.sim_api import JobsReply


def simulator_config(
    *,
    vms: int | None,
    seed: int,
    trace: Path | None,
    host_cores: int | None,
    arrivals_rate: float,
    arrivals_file: Path | None,
    file: ConfigFile | None = None,
    file_dir: Path = Path("."),
    host_memory: str | None = None,
    host_memory_overcommit: float | None = None,
) -> SimulatorConfig:
    """The simulator child's configuration: each key as ``up`` passes it (``child_argv``), else as the file's
    ``[simulator]`` section sets it (its paths taken from ``file_dir``), else the simulator's default."""
    own = file.simulator if file is not None else SimulatorSection()
    default_vms = SimulatorConfig().vms
    # up names --vms unless it replays a trace of its own and was given no count; then the file's count holds
    count = (vms or default_vms) if vms is not None or trace is None else own.vms
    if trace is None and own.trace is not None:
        trace = file_dir / own.trace
    return SimulatorConfig(
        vms=count or default_vms,
        seed=seed,
        profiles=tuple(p for p in (own.profiles or "").split(",") if p),
        max_vcpus=own.max_vcpus,
        trace=trace,
        trace_vms=count,
        host_cores=host_cores if host_cores is not None else own.host_cores,
        arrivals_rate=arrivals_rate or own.arrivals_rate or 0.0,
        arrivals_file=arrivals_file or (file_dir / own.arrivals_file if own.arrivals_file is not None else None),
        arrivals_seed=own.arrivals_seed,
        host_memory_bytes=memory_bytes_of("host_memory", host_memory if host_memory is not None else own.host_memory),
        memory_overcommit=host_memory_overcommit
        if host_memory_overcommit is not None
        else own.host_memory_overcommit or SimulatorConfig().memory_overcommit,
    )


def fixed_size_run(config: SimulatorConfig, live: JobsReply) -> Outcome:
    """``config``'s run on the live run's host (cores, capacity, memory capacity) and span, with fixed sizes."""
    span = max(0.0, live.time - live.origin)
    return fixed_sizes(
        arrivals_until(scenario.arrivals(config), span),
        cores=live.host.cores,
        capacity_vcpus=live.host.capacity_vcpus,
        span_s=span,
        resident=scenario.resident_vms(config, 0.0),
        # jobs wait for memory in the fixed-size run as they did in the live one (when the host's memory was given)
        memory_capacity_bytes=live.host.memory_capacity_bytes,
    )
