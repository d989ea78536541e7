"""``hotplug up``: broker, simulator, collector, decider and actuator as supervised processes, a live view,
and a summary at the end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats.errors
from nats.aio.client import Client
from rich.console import Console
from rich.live import Live

from evaluation.counterfactual import fixed_size_run, simulator_config
from hotplug.events import BROKER_DIR, BROKER_FILE, write_broker_file
from hotplug.fleet import Fleet
from hotplug.harness.processes import hotplug_argv
from hotplug.harness.recorder import BusWatcher
from hotplug.supervisor import Supervisor
from hotplug.view import render
from services.simulator.scenario import SimulatorConfig
from shared import bus, subjects
from shared.broker import EmbeddedBroker, free_port
from shared.cluster import EmbeddedCluster, embedded_broker
from shared.config.load import load
from shared.config.schema import ConfigFile
from shared.messages import HostState, MetricSample, ScaleCommand, ScaleResult
from shared.qemu.vm import QemuVm
from shared.sim_api import JobsReply

log = logging.getLogger(__name__)

SERVICES = ("simulator", "collector", "decider", "actuator")
EXTERNAL_DECIDER_DOC = "docs/deciders-any-language.md"
DEFAULT_VMS = 6


@dataclass(frozen=True)
class UpOptions:
    # None: 6 seeded VMs, or every VM of the trace.
    vms: int | None = None
    trace: Path | None = None
    duration_s: float | None = None
    speed: float = 1.0
    policy: str = "default"
    params: tuple[str, ...] = ()
    data_dir: Path = Path(".hotplug")
    nats_url: str | None = None
    host: str = "local"
    seed: int = 1
    interval_s: float = 1.0
    dry_run: bool = False
    # False: no decider child; one from outside (any language) commands the loop.
    decider: bool = True
    view: bool = True
    log_level: str = "INFO"
    hypervisor: str = "simulator"
    max_vcpus: int = 4
    # Embedded broker only: this many nodes on loopback, streams kept on up to three of them.
    cluster: int = 1
    # libvirt: test domains to start for the run (0: the domains already running), and the URI (None: default).
    libvirt_guests: int = 0
    libvirt_uri: str | None = None
    # Every child also reads this config file (its own section and the [[vm]] rules); what up passes comes first.
    config: Path | None = None
    # The simulated host's cores (None: the simulator's default) and the jobs that arrive at it.
    host_cores: int | None = None
    arrivals_rate: float = 0.0
    arrivals_file: Path | None = None


def services_of(options: UpOptions) -> list[str]:
    """The children ``up`` runs: no simulator with a real hypervisor (its VMs are the cloud), no decider with
    ``--no-decider``."""
    return [
        s
        for s in SERVICES
        if (s != "simulator" or options.hypervisor == "simulator") and (s != "decider" or options.decider)
    ]


def clock_line(speed: float, epoch: float) -> str:
    """The run's shared clock, as a process started by hand beside it must be given it."""
    return (
        f"clock: x{speed:g} from epoch {epoch!r}; a service started beside this run takes "
        f"--speed {speed:g} --epoch {epoch!r}"
    )


def child_argv(service: str, options: UpOptions, url: str | None, epoch: float, port: int) -> list[str]:
    """A service's command line; without ``url`` it reads $HOTPLUG_NATS_URL (a URL with credentials stays out
    of the process list)."""
    argv = hotplug_argv(
        service,
        *(["--nats", url] if url else []),
        "--host",
        options.host,
        "--speed",
        repr(options.speed),
        "--epoch",
        repr(epoch),
        "--metrics-port",
        str(port),
        "--log-level",
        options.log_level,
        *(["--config", str(options.config)] if options.config is not None else []),
    )
    if service == "simulator":
        argv += ["--seed", str(options.seed)]
        if options.vms is not None or options.trace is None:
            argv += ["--vms", str(options.vms or DEFAULT_VMS)]
        if options.trace is not None:
            argv += ["--trace", str(options.trace)]
        if options.host_cores is not None:
            argv += ["--host-cores", str(options.host_cores)]
        if options.arrivals_rate > 0:
            argv += ["--arrivals-rate", repr(options.arrivals_rate)]
        if options.arrivals_file is not None:
            argv += ["--arrivals-file", str(options.arrivals_file)]
    elif service == "collector":
        argv += ["--source", options.hypervisor, "--interval", repr(options.interval_s)]
        if options.hypervisor == "libvirt" and options.libvirt_uri:
            argv += ["--libvirt-uri", options.libvirt_uri]
    elif service == "decider":
        argv += ["--policy", options.policy]
        for param in options.params:
            argv += ["--param", param]
        if options.dry_run:
            argv.append("--dry-run")
    elif service == "actuator":
        argv += ["--driver", options.hypervisor]
        if options.hypervisor == "libvirt" and options.libvirt_uri:
            argv += ["--libvirt-uri", options.libvirt_uri]
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
                f"{result.vm}: {result.vcpus_before} -> {result.vcpus_after} "
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
    guests: list[QemuVm] = []
    domains: list[str] = []
    if options.hypervisor == "qemu":
        env["HOTPLUG_QEMU_DIR"] = str(data_dir / "qemu")
    if options.hypervisor == "libvirt":
        env["HOTPLUG_LIBVIRT_DIR"] = str(data_dir / "libvirt")
    supervisor = Supervisor(data_dir / "logs", env=env)
    config = (await asyncio.to_thread(load, options.config)).config if options.config is not None else None
    fleet = Fleet(config, options.policy)
    nc = None
    try:
        if options.hypervisor == "qemu":
            guests = await _boot_guests(options, data_dir / "qemu")
        if options.hypervisor == "libvirt" and options.libvirt_guests:
            domains = await _start_domains(options, data_dir / "libvirt")
        nc = await bus.connect(url, "hotplug-up")
        await bus.ensure_streams(nc.jetstream(), reconcile=True)
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
        simulator = simulator_of(options, config)
        if simulator is not None and simulator.has_arrivals:
            await _job_outcomes(nc, options.host, simulator, fleet)
    finally:
        await supervisor.stop()
        for guest in guests:
            await asyncio.to_thread(guest.stop)
        if domains:
            await asyncio.to_thread(_stop_domains, options, domains, data_dir / "libvirt")
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        if broker is not None:
            await asyncio.to_thread(broker.stop)
            (data_dir / BROKER_FILE).unlink(missing_ok=True)
    for child in supervisor.children.values():
        if child.restarts:
            print(f"{child.name} was restarted {child.restarts} time(s)")
    print("\n".join(fleet.summary_lines()))
    print(f"event log kept in {data_dir}; read it with: hotplug events --data-dir {options.data_dir}")
    return fleet


def simulator_of(options: UpOptions, config: ConfigFile | None) -> SimulatorConfig | None:
    """What the simulator child runs (None: no simulator), as ``child_argv`` and the config file set it up."""
    if options.hypervisor != "simulator":
        return None
    return simulator_config(
        vms=options.vms,
        seed=options.seed,
        trace=options.trace,
        host_cores=options.host_cores,
        arrivals_rate=options.arrivals_rate,
        arrivals_file=options.arrivals_file,
        file=config,
        file_dir=options.config.parent if options.config is not None else Path("."),
    )


async def _job_outcomes(nc: Client, host: str, simulator: SimulatorConfig, fleet: Fleet) -> None:
    """Ask the simulator what became of its jobs (before it stops), and run the same arrivals with fixed sizes."""
    try:
        msg = await nc.request(subjects.simulator(host, "jobs"), b"{}", timeout=10)
        live = msgspec.json.decode(msg.data, type=JobsReply)
    except (nats.errors.Error, TimeoutError, msgspec.DecodeError) as exc:
        print(f"could not read the jobs from the simulator: {exc}", flush=True)
        return
    fleet.on_jobs(live, await asyncio.to_thread(fixed_size_run, simulator, live))


async def _boot_guests(options: UpOptions, root: Path) -> list[QemuVm]:
    """``options.vms`` real guests, booted in parallel with 1 vCPU each."""
    from shared.qemu.image import ensure_image

    image = await asyncio.to_thread(ensure_image)
    names = [f"vm-{i + 1:02d}" for i in range(options.vms or DEFAULT_VMS)]
    booted = await asyncio.gather(
        *(
            asyncio.to_thread(QemuVm.start, name, image, max_vcpus=options.max_vcpus, vcpus=1, root=root)
            for name in names
        ),
        return_exceptions=True,
    )
    guests = [g for g in booted if isinstance(g, QemuVm)]
    failures = [g for g in booted if isinstance(g, BaseException)]
    if failures:
        for guest in guests:
            await asyncio.to_thread(guest.stop)
        raise failures[0]
    for guest in guests:
        pid = (await asyncio.to_thread(guest.state)).pid
        print(f"{guest.name}: QEMU guest up (pid {pid}), 1 of {options.max_vcpus} vCPUs", flush=True)
    return list(guests)


async def _start_domains(options: UpOptions, root: Path) -> list[str]:
    """``options.libvirt_guests`` transient test domains with 1 vCPU each, started in parallel; all or none."""
    from hotplug import libvirt_cmd
    from shared.libvirt.connection import Connection
    from shared.qemu.image import ensure_image

    await asyncio.to_thread(ensure_image)
    names = [f"vm-{i + 1:02d}" for i in range(options.libvirt_guests)]
    conn = Connection(options.libvirt_uri)
    try:
        started = await asyncio.gather(
            *(asyncio.to_thread(libvirt_cmd.start, conn, name, options.max_vcpus, 1, 256, root) for name in names),
            return_exceptions=True,
        )
    finally:
        conn.close()
    failures = [s for s in started if isinstance(s, BaseException)]
    ok = [name for name, s in zip(names, started, strict=True) if not isinstance(s, BaseException)]
    if failures:
        await asyncio.to_thread(_stop_domains, options, ok, root)
        raise failures[0]
    return names


def _stop_domains(options: UpOptions, names: list[str], root: Path) -> None:
    from hotplug import libvirt_cmd
    from shared.libvirt.connection import Connection

    conn = Connection(options.libvirt_uri)
    try:
        for name in names:
            try:
                libvirt_cmd.stop(conn, name, root)
            except Exception as exc:  # stop the others all the same
                log.warning("could not stop libvirt domain %s: %s", name, exc)
    finally:
        conn.close()


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
