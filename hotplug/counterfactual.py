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
from shared.config.schema import ConfigFile
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
) -> SimulatorConfig:
    """The simulator child's configuration: ``up``'s own options first, then the file's ``[simulator]``."""
    own = file.simulator if file is not None else None
    profiles = own.profiles if own is not None and own.profiles else ""
    file_arrivals = own.arrivals_file if own is not None else None
    rate = arrivals_rate or (own.arrivals_rate if own is not None and own.arrivals_rate else 0.0)
    path = arrivals_file
    if path is None and not arrivals_rate and file_arrivals is not None:
        path = file_dir / file_arrivals
    return SimulatorConfig(
        vms=vms or SimulatorConfig().vms,
        seed=seed,
        profiles=tuple(p for p in profiles.split(",") if p),
        max_vcpus=own.max_vcpus if own is not None else None,
        trace=trace,
        trace_vms=vms,
        host_cores=host_cores if host_cores is not None else (own.host_cores if own is not None else None),
        arrivals_rate=0.0 if path is not None else rate,
        arrivals_file=path,
        arrivals_seed=own.arrivals_seed if own is not None else None,
    )


def fixed_size_run(config: SimulatorConfig, live: JobsReply) -> Outcome:
    """``config``'s run on the live run's host (cores, capacity) and span, with fixed sizes."""
    span = max(0.0, live.time - live.origin)
    return fixed_sizes(
        arrivals_until(scenario.arrivals(config), span),
        cores=live.host.cores,
        capacity_vcpus=live.host.capacity_vcpus,
        span_s=span,
        resident=scenario.resident_vms(config, 0.0),
    )
