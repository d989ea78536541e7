"""``hotplug up``: broker, collector, decider and actuator as supervised processes, with what the hypervisor's record
provisions (the simulated cloud's service, guests booted for the run), a live view, and a summary at the end.

Nothing here knows one hypervisor from another: each is a record in :mod:`hotplug.hypervisors`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from hotplug.config import load_file
from hotplug.events import BROKER_DIR, BROKER_FILE, change_text, event_record, write_broker_file
from hotplug.fleet import Fleet
from hotplug.fleet_view import render
from hotplug.harness.poll import within
from hotplug.harness.processes import METRICS_PORT_FLAG, hotplug_argv
from hotplug.harness.recorder import BusWatcher
from hotplug.hypervisors import HYPERVISORS, Hypervisor
from hotplug.supervisor import Supervisor
from shared import bus
from shared.broker import EmbeddedBroker, free_port
from shared.cluster import EmbeddedCluster, embedded_broker
from shared.config.schema import ServiceSettings, UpSettings
from shared.messages import HostState, MetricSample, ScaleCommand, ScaleResult

# The loop's services, which every hypervisor's run has (a hypervisor adds its own before them: the simulator).
DECIDER = "decider"
LOOP = ("collector", DECIDER, "actuator")
# Wall seconds the actuator gets, once the decider has stopped, to answer the commands it was sent.
ANSWER_GRACE_S = 10.0
EXTERNAL_DECIDER_DOC = "docs/deciders-any-language.md"


_UP = UpSettings()  # up's built-in defaults, declared once


@dataclass(frozen=True)
class UpOptions:
    # None: the hypervisor's own default (the simulator's 6 seeded VMs, or every VM of its trace; 6 QEMU guests).
    vms: int | None = None
    duration_s: float | None = None
    speed: float = _UP.speed
    policy: str = "default"
    params: tuple[str, ...] = ()
    data_dir: Path = Path(_UP.data_dir)
    nats_url: str | None = None
    host: str = ServiceSettings().host
    interval_s: float = _UP.interval
    dry_run: bool = False
    # False: no decider child; one from outside (any language) commands the loop.
    decider: bool = True
    view: bool = True
    log_level: str = _UP.log_level
    hypervisor: str = _UP.hypervisor
    # Each guest's maximum, where the hypervisor boots guests for the run (it boots with 1).
    max_vcpus: int = _UP.max_vcpus
    # Embedded broker only: this many nodes on loopback, streams kept on up to three of them.
    cluster: int = _UP.cluster
    # Every child also reads this config file (its own section and the [[vm]] rules); what up passes comes first.
    config: Path | None = None
    # The hypervisor's own options (its record's ``options`` Struct); None: its defaults.
    own: Any = None


def hypervisor_of(options: UpOptions) -> Hypervisor[Any]:
    return HYPERVISORS.get(options.hypervisor)


def services_of(options: UpOptions) -> list[str]:
    """The children ``up`` runs: the hypervisor's own (the simulated cloud), the loop's, no decider with
    ``--no-decider``."""
    return [*hypervisor_of(options).services, *(s for s in LOOP if s != DECIDER or options.decider)]


def clock_line(speed: float, epoch: float) -> str:
    """The run's shared clock, as a process started by hand beside it must be given it."""
    return (
        f"clock: x{speed:g} from epoch {epoch!r}; a service started beside this run takes "
        f"--speed {speed:g} --epoch {epoch!r}"
    )


def child_argv(service: str, options: UpOptions, url: str | None, epoch: float, port: int) -> list[str]:
    """A service's command line; without ``url`` it reads $HOTPLUG_NATS_URL (a URL with credentials stays out
    of the process list)."""
    hypervisor = hypervisor_of(options)
    argv = hotplug_argv(
        service,
        *(["--nats", url] if url else []),
        "--host",
        options.host,
        "--speed",
        repr(options.speed),
        "--epoch",
        repr(epoch),
        METRICS_PORT_FLAG,
        str(port),
        "--log-level",
        options.log_level,
        *(["--config", str(options.config)] if options.config is not None else []),
    )
    if service == "collector":
        argv += ["--source", hypervisor.source_name, "--interval", repr(options.interval_s)]
    elif service == DECIDER:
        argv += ["--policy", options.policy]
        for param in options.params:
            argv += ["--param", param]
        if options.dry_run:
            argv.append("--dry-run")
    elif service == "actuator":
        argv += ["--driver", hypervisor.driver_name]
    if hypervisor.service_args is not None:
        argv += hypervisor.service_args(service, options)
    return argv


class _Watcher(BusWatcher):
    """Feeds the fleet view from the bus; the supervisor's own, read-only view of the run."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__()
        self.fleet = fleet

    def on_sample(self, sample: MetricSample) -> None:
        self.fleet.on_sample(sample)

    def on_command(self, command: ScaleCommand) -> None:
        self.fleet.on_command(command)

    def on_host_state(self, state: HostState) -> None:
        self.fleet.on_host_state(state)

    def on_result(self, result: ScaleResult) -> None:
        self.fleet.on_result(result)
        if not sys.stdout.isatty():
            print(
                f"{result.vm}: {change_text(event_record(result)).replace('→', ' -> ')} "
                f"{'ok' if result.ok else f'failed ({result.error_code})'}",
                flush=True,
            )


async def run_up(options: UpOptions) -> Fleet:
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    broker: EmbeddedBroker | EmbeddedCluster | None = None
    url = options.nats_url
    env = dict(os.environ)
    if url is None:
        broker = embedded_broker(data_dir / BROKER_DIR, options.cluster)
        url = await asyncio.to_thread(broker.start)  # waits for the broker to be ready
        assert broker.pid is not None
        write_broker_file(data_dir, url, broker.pid)
        kind = f"embedded cluster of {options.cluster} nodes" if options.cluster > 1 else "embedded"
        print(f"nats: {url} ({kind}, data in {data_dir / BROKER_DIR})", flush=True)
        if isinstance(broker, EmbeddedCluster):
            env[bus.REPLICAS_ENV] = os.environ[bus.REPLICAS_ENV] = str(broker.replicas)
    hypervisor = hypervisor_of(options)
    config = (await asyncio.to_thread(load_file, options.config)).config if options.config is not None else None
    fleet = Fleet(config, options.policy)
    nc = None
    supervisor: Supervisor | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            # Entered before the supervisor, left after it: the hypervisor's guests outlive the services.
            env.update(await stack.enter_async_context(hypervisor.provision(options, data_dir)))
            supervisor = Supervisor(data_dir / "logs", env=env)
            stack.push_async_callback(supervisor.stop)
            nc = await bus.connect(url, "hotplug-up")
            # a roomier deadline than nats-py's 5 s for this one-time set-up: a just-elected cluster's replicated
            # streams answered slower than that on a loaded machine (as in `hotplug chaos`)
            await bus.ensure_streams(nc.jetstream(timeout=30), reconcile=True, patience_s=120)
            await _Watcher(fleet).attach(nc, hosts=True)
            epoch = time.time()
            for service in services_of(options):
                port = free_port()
                await supervisor.start(service, child_argv(service, options, url, epoch, port), port)
                print(f"{service} metrics: http://127.0.0.1:{port}/metrics", flush=True)
            print(clock_line(options.speed, epoch), flush=True)
            if not options.decider:
                print(f"decider: none (--no-decider); yours commands the loop: {EXTERNAL_DECIDER_DOC}", flush=True)
            await _wait(options, fleet)
            await _stop_deciding(supervisor, fleet)
            if hypervisor.finish is not None:
                await hypervisor.finish(nc, options, config, fleet)
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        if broker is not None:
            await asyncio.to_thread(broker.stop)
            (data_dir / BROKER_FILE).unlink(missing_ok=True)
    children = supervisor.children.values() if supervisor is not None else ()
    for child in children:
        if child.restarts:
            print(f"{child.name} was restarted {child.restarts} time(s)")
    print("\n".join(fleet.summary_lines()))
    print(f"event log kept in {data_dir}; read it with: hotplug events --data-dir {options.data_dir}")
    return fleet


async def _stop_deciding(supervisor: Supervisor, fleet: Fleet) -> None:
    """The decider stops first, and the actuator gets up to ``ANSWER_GRACE_S`` to answer what it was sent: a command
    sent in the run's last moment ends in its result in this run's log, not at the actuator's next start."""
    if DECIDER in supervisor.children:
        await supervisor.retire(DECIDER)
    if not await within(ANSWER_GRACE_S, lambda: fleet.unanswered == 0, interval_s=0.1):
        print(f"{fleet.unanswered} command(s) unanswered at the end: the actuator answers them at its next start")


async def _wait(options: UpOptions, fleet: Fleet) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    wall_deadline = None if options.duration_s is None else time.monotonic() + options.duration_s / options.speed
    decider = f"policy {options.policy}" if options.decider else "your decider"
    title = f"Hot-Plug Heaven: {decider}, speed x{options.speed:g} (Ctrl-C to stop)"
    live = (
        Live(render(fleet, title), refresh_per_second=2, console=Console())
        if (options.view and sys.stdout.isatty())
        else None
    )
    try:
        if live is not None:
            live.start()
        while not stop.is_set():
            if wall_deadline is not None and time.monotonic() >= wall_deadline:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            if live is not None:
                live.update(render(fleet, title))
    finally:
        if live is not None:
            live.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
