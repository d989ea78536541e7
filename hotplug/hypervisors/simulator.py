"""The simulated mini-cloud as a hypervisor: ``up`` runs its simulator service (seeded VMs, or a trace's), and can
send jobs to its host; afterwards it asks the simulator what became of them."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from hotplug.cli.common import check_arrivals, check_trace
from hotplug.hypervisors import DEFAULT_VMS, Hypervisor
from shared.config.schema import (
    ArrivalsFile,
    ArrivalsRate,
    HostCores,
    HostMemory,
    HostMemoryOvercommit,
    Seed,
    SimulatorSettings,
    TraceFile,
)
from shared.errors import UsageError

if TYPE_CHECKING:  # the record is read by every command's parser: what only a run needs loads when up runs
    from nats.aio.client import Client

    from hotplug.fleet import Fleet
    from hotplug.up import UpOptions
    from services.simulator.scenario import SimulatorConfig
    from shared.config.schema import ConfigFile

ORDER = 10  # the default, first among --hypervisor's choices

SERVICE = "simulator"


_SIMULATOR = SimulatorSettings()  # up passes these to its simulator child: their defaults are the simulator's


class SimulatorUp(msgspec.Struct, frozen=True, kw_only=True):
    """``up``'s options for the simulated cloud, named as their flags: the simulator's own settings, declared with
    the same types (``shared.config.schema``), which ``up`` passes on to its simulator child."""

    trace: TraceFile = None
    seed: Seed = _SIMULATOR.seed
    host_cores: HostCores = None
    host_memory: HostMemory = None
    host_memory_overcommit: HostMemoryOvercommit | None = None  # None: the file's, else the simulator's default
    arrivals_rate: ArrivalsRate = _SIMULATOR.arrivals_rate
    arrivals_file: ArrivalsFile = None


def prepare(own: SimulatorUp, options: UpOptions, config: ConfigFile | None) -> SimulatorUp:
    """Read the trace and the arrivals now (a bad one fails with one line), with paths the child finds whatever
    its working directory; and check that the simulator's settings go together."""
    if own.trace is not None:
        check_trace(Path(own.trace))
        own = msgspec.structs.replace(own, trace=str(Path(own.trace).resolve()))
    check_arrivals(own.arrivals_rate, _path(own.arrivals_file))
    if own.arrivals_file is not None:
        own = msgspec.structs.replace(own, arrivals_file=str(Path(own.arrivals_file).resolve()))
    try:  # the simulator child's own settings, as up will rebuild them to compare its jobs' waits
        simulator_of(dataclasses.replace(options, own=own), config)
    except ValueError as exc:
        raise UsageError(f"the simulator's settings (flags and [simulator]) do not go together: {exc}") from exc
    return own


def service_args(service: str, options: UpOptions) -> list[str]:
    """The simulator child's own arguments; the collector's source and the actuator's driver take none."""
    if service != SERVICE:
        return []
    own = HYPERVISOR.own(options)
    argv = ["--seed", str(own.seed)]
    if options.vms is not None or own.trace is None:
        argv += ["--vms", str(options.vms or DEFAULT_VMS)]
    if own.trace is not None:
        argv += ["--trace", own.trace]
    if own.host_cores is not None:
        argv += ["--host-cores", str(own.host_cores)]
    if own.host_memory is not None:
        argv += ["--host-memory", str(own.host_memory)]
    if own.host_memory_overcommit is not None:
        argv += ["--host-memory-overcommit", repr(own.host_memory_overcommit)]
    if own.arrivals_rate > 0:
        argv += ["--arrivals-rate", repr(own.arrivals_rate)]
    if own.arrivals_file is not None:
        argv += ["--arrivals-file", own.arrivals_file]
    return argv


def simulator_of(options: UpOptions, config: ConfigFile | None) -> SimulatorConfig:
    """What the simulator child runs, as ``service_args`` and the config file set it up."""
    from evaluation.counterfactual import simulator_config

    own = HYPERVISOR.own(options)
    return simulator_config(
        vms=options.vms,
        seed=own.seed,
        trace=_path(own.trace),
        host_cores=own.host_cores,
        host_memory=own.host_memory,
        host_memory_overcommit=own.host_memory_overcommit,
        arrivals_rate=own.arrivals_rate,
        arrivals_file=_path(own.arrivals_file),
        file=config,
        file_dir=options.config.parent if options.config is not None else Path("."),
    )


def _path(text: str | None) -> Path | None:
    return Path(text) if text is not None else None


async def job_outcomes(nc: Client, options: UpOptions, config: ConfigFile | None, fleet: Fleet) -> None:
    """Ask the simulator what became of its jobs (before it stops), and run the same arrivals with fixed sizes."""
    import nats.errors

    from evaluation.counterfactual import fixed_size_run
    from shared import subjects
    from shared.sim_api import JobsReply

    simulator = simulator_of(options, config)
    if not simulator.has_arrivals:
        return
    try:
        msg = await nc.request(subjects.simulator(options.host, "jobs"), b"{}", timeout=10)
        live = msgspec.json.decode(msg.data, type=JobsReply)
    except (nats.errors.Error, TimeoutError, msgspec.DecodeError) as exc:
        print(f"could not read the jobs from the simulator: {exc}", flush=True)
        return
    fleet.on_jobs(live, await asyncio.to_thread(fixed_size_run, simulator, live))


HYPERVISOR: Hypervisor[SimulatorUp] = Hypervisor(
    name="simulator",
    summary=f"simulator: --vms seeded VMs (default {DEFAULT_VMS}), or a --trace's, in the simulated cloud of the run",
    vms=f"VMs (default {DEFAULT_VMS}; with --trace, the first N of the trace's VMs by name, default all)",
    options=SimulatorUp,
    prepare=prepare,
    services=(SERVICE,),
    service_args=service_args,
    finish=job_outcomes,
)
