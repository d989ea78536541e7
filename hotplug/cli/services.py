"""Commands that run the services: ``up`` (all of them at once), ``simulator``, ``collector``, ``decider``,
``actuator`` and ``agent``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from hotplug.cli.common import (
    Subparsers,
    add_command,
    at_least_one,
    check_arrivals,
    check_trace,
    positive,
    run,
    service_options,
    service_parent,
    simulated_host_options,
)
from hotplug.config import add_config_option, epilog, loaded_of, watch_config
from hotplug.hypervisors import HYPERVISORS
from services.actuator.checks import Bounds
from services.actuator.drivers.registry import DRIVERS
from services.collector.sources.registry import SOURCES
from shared import topology
from shared.config.load import LoadedConfig
from shared.errors import UsageError
from shared.runtime import ServiceContext, resolve_nats_url

if TYPE_CHECKING:
    from services.simulator.scenario import SimulatorConfig

ORDER = 10  # first in ``hotplug --help``


def _libvirt_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--libvirt-uri", default=None, help="libvirt URI ($HOTPLUG_LIBVIRT_URI; default qemu:///system)")
    p.add_argument(
        "--libvirt-opt-in",
        action="store_true",
        help="libvirt: only domains whose hotplug metadata says enabled (hotplug libvirt prepare)",
    )


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    service = service_parent()
    add_config_option(service)

    up = add_command(
        sub, "up", cmd_up, epilog=epilog("up"), help="run broker, simulator, collector, decider and actuator together"
    )
    add_config_option(up)
    hypervisors = HYPERVISORS.all()
    up.add_argument(
        "--vms",
        type=at_least_one,
        default=None,
        help="the run's VMs, as the hypervisor makes them: "
        + "; ".join(f"{h.name}: {h.vms}" for h in hypervisors if h.vms is not None),
    )
    up.add_argument("--duration", type=positive, default=None, help="stop after this many simulated seconds")
    up.add_argument("--speed", type=positive, default=1.0, help="simulated seconds per wall second")
    up.add_argument("--policy", default=None, help="the decider's (default: the file's [decider] policy, or default)")
    up.add_argument("--param", action="append", default=[], metavar="NAME.KEY=VALUE")
    up.add_argument("--data-dir", type=Path, default=Path(".hotplug"))
    up.add_argument("--nats", help="use this NATS server instead of starting one")
    up.add_argument(
        "--cluster",
        type=int,
        default=1,
        metavar="NODES",
        help="start a NATS cluster of this many nodes on loopback (streams kept on three)",
    )
    up.add_argument(
        "--hypervisor",
        choices=[h.name for h in hypervisors],
        default="simulator",
        help="; ".join(h.summary for h in hypervisors),
    )
    up.add_argument(
        "--max-vcpus", type=int, default=4, help="a hypervisor that boots guests for the run: each one's maximum"
    )
    for hypervisor in hypervisors:  # each hypervisor's own options (--trace, --libvirt-uri...)
        if hypervisor.add_options is not None:
            hypervisor.add_options(up)
    up.add_argument("--interval", type=positive, default=1.0, help="sampling interval, simulated seconds")
    up.add_argument("--dry-run", action="store_true", help="decide and log, but command nothing")
    up.add_argument(
        "--no-decider",
        action="store_true",
        help="run no decider: the broker, simulator, collector and actuator wait for yours, in any language "
        "(docs/deciders-any-language.md); up prints the clock's --speed and --epoch for it",
    )
    up.add_argument("--no-view", action="store_true", help="no live table (it is off anyway without a terminal)")
    up.add_argument("--log-level", default="INFO")

    sim = add_command(
        sub, "simulator", cmd_simulator, parents=[service], epilog=epilog("simulator"), help="the simulated mini-cloud"
    )
    sim.add_argument(
        "--vms",
        type=at_least_one,
        default=None,
        help="VMs to simulate (default 6); with --trace, the first N of the trace's VMs by name",
    )
    sim.add_argument(
        "--trace",
        type=Path,
        default=None,
        metavar="FILE",
        help="VMs follow this replay CSV (time_s,vm,demand_vcpus[,max_vcpus]), from the run's start, "
        "repeating at its end, instead of the seeded profiles",
    )
    sim.add_argument("--seed", type=int, default=1)
    simulated_host_options(sim)
    sim.add_argument("--arrivals-seed", type=int, default=None, help="the arrivals' seed (default: --seed)")
    sim.add_argument("--hotplug-delay", type=float, default=0.3, help="simulated seconds per plug or unplug")
    sim.add_argument("--profiles", default="", help="comma-separated workload profiles to cycle through")
    sim.add_argument(
        "--max-vcpus",
        type=int,
        default=None,
        help="every VM's maximum (it boots with half); default: 4, 8, 16, 8 in turn",
    )

    col = add_command(
        sub,
        "collector",
        cmd_collector,
        parents=[service],
        epilog=epilog("collector"),
        help="sample CPU use and publish metrics",
    )
    col.add_argument("--source", choices=SOURCES.names(), default="simulator")
    _libvirt_options(col)
    col.add_argument(
        "--libvirt-domain",
        action="append",
        default=[],
        metavar="NAME",
        help="libvirt source: watch only this domain (repeatable; default: every running domain)",
    )
    col.add_argument("--interval", type=positive, default=1.0)
    col.add_argument(
        "--process",
        action="append",
        default=[],
        metavar="VM=PID|VM=REGEX",
        help="psutil source: a host process to watch as a VM",
    )

    dec = add_command(
        sub,
        "decider",
        cmd_decider,
        parents=[service],
        epilog=epilog("decider"),
        help="turn metrics into scale commands",
    )
    dec.add_argument("--policy", default="default")
    dec.add_argument("--param", action="append", default=[], metavar="NAME.KEY=VALUE")
    dec.add_argument("--name", default=topology.DECIDER_NAME, help="this decider's name in commands")
    dec.add_argument("--dry-run", action="store_true", help="log what it would do; command nothing")
    dec.add_argument(
        "--lease", default=None, help="replicas with the same lease elect one active decider (commands carry its term)"
    )
    dec.add_argument("--lease-ttl", type=positive, default=5.0, help="seconds a lease lasts without renewal")
    dec.add_argument(
        "--group",
        default=None,
        help="share the VMs with the other live deciders of this group (each needs its own --name)",
    )
    dec.add_argument(
        "--shadow",
        action="store_true",
        help="publish proposals on hotplug.proposals.<name>.<host>.<vm> instead of commands",
    )
    dec.add_argument("--max-sample-age", type=positive, default=10.0)
    dec.add_argument(
        "--intake-capacity",
        type=int,
        default=100_000,
        metavar="VMS",
        help="VMs whose newest sample may wait at once; a flood sheds the oldest samples",
    )
    dec.add_argument("--command-ttl", type=positive, default=30.0)

    act = add_command(
        sub,
        "actuator",
        cmd_actuator,
        parents=[service],
        epilog=epilog("actuator"),
        help="execute scale commands on the hypervisor",
    )
    act.add_argument("--driver", choices=DRIVERS.names(), default="simulator")
    _libvirt_options(act)
    act.add_argument("--name", default=topology.ACTUATOR_NAME)
    act.add_argument("--min-vcpus", type=int, default=Bounds().min_vcpus)
    act.add_argument("--max-vcpus", type=int, default=Bounds().max_vcpus)
    act.add_argument("--step-timeout", type=positive, default=30.0)
    act.add_argument(
        "--vm-bounds",
        action="append",
        default=[],
        metavar="VM=MIN:MAX",
        help="this VM's own bounds (the last '=' separates the name); repeatable",
    )
    act.add_argument("--max-changes", type=int, default=6, help="resizes allowed per VM per --rate-window")
    act.add_argument("--rate-window", type=positive, default=60.0, help="seconds (of the shared clock)")
    act.add_argument(
        "--ack-wait",
        type=positive,
        default=60.0,
        help="seconds before an unacknowledged command is redelivered (e.g. after a crash)",
    )

    agent = add_command(
        sub,
        "agent",
        cmd_agent,
        parents=[service],
        epilog=epilog("agent"),
        help="inside a Linux guest: publish its own CPU view",
    )
    # Required, from the command line or the config file (which argparse's own "required" cannot see).
    agent.add_argument("--vm", default=None, help="the VM's name as the hypervisor knows it (required)")
    agent.add_argument("--interval", type=positive, default=1.0)
    agent.add_argument("--no-online", action="store_true", help="do not bring newly plugged CPUs online")


def cmd_simulator(args: argparse.Namespace) -> int:
    from services.simulator.service import SimulatorMetrics, SimulatorService

    options = service_options(args, "simulator")
    if args.trace is not None:
        if args.profiles or args.max_vcpus is not None:
            raise UsageError("--trace gives each VM its demand and size; it excludes --profiles and --max-vcpus")
        check_trace(args.trace)
    check_arrivals(args.arrivals_rate, args.arrivals_file)
    config = simulator_config_of(args)

    async def body(ctx: ServiceContext[SimulatorMetrics]) -> None:
        service = SimulatorService(ctx, config)
        watch_config(ctx, args, "simulator", lambda new: service.use_host_rules(tuple(new.config.host)))
        await service.run()

    return run(options, SimulatorMetrics("simulator"), body)


def simulator_config_of(args: argparse.Namespace) -> SimulatorConfig:
    """The simulator's settings from its parsed options (and the config file's [[host]] rules)."""
    from services.simulator.scenario import SimulatorConfig

    loaded = loaded_of(args)
    return SimulatorConfig(
        vms=args.vms or SimulatorConfig().vms,
        seed=args.seed,
        hotplug_delay_s=args.hotplug_delay,
        profiles=tuple(p for p in args.profiles.split(",") if p),
        max_vcpus=args.max_vcpus,
        trace=args.trace,
        trace_vms=args.vms,
        host_cores=args.host_cores,
        arrivals_rate=args.arrivals_rate,
        arrivals_file=args.arrivals_file,
        arrivals_seed=args.arrivals_seed,
        host_rules=tuple(loaded.config.host) if loaded else (),
    )


def cmd_collector(args: argparse.Namespace) -> int:
    from services.collector.service import Collector, CollectorMetrics

    options = service_options(args, "collector")
    config = SOURCES.config(args.source, vars(args))

    async def body(ctx: ServiceContext[CollectorMetrics]) -> None:
        loaded = loaded_of(args)
        source = SOURCES.build(args.source, config, ctx)
        collector = Collector(ctx, source, args.interval, host_rules=loaded.config.host if loaded else ())
        watch_config(ctx, args, "collector", lambda new: collector.use_host_rules(new.config.host))
        await collector.run()

    return run(options, CollectorMetrics("collector"), body)


def cmd_decider(args: argparse.Namespace) -> int:
    from services.decider.registry import build_policy, parse_params
    from services.decider.rulebook import build_rulebook
    from services.decider.service import Decider, DeciderConfig, DeciderMetrics

    options = service_options(args, "decider")
    params = parse_params(args.param)
    policy, rails = build_policy(args.policy, params)
    rules = build_rulebook(loaded_of(args), args.policy, params)
    config = DeciderConfig(
        name=args.name,
        dry_run=args.dry_run,
        shadow=args.shadow,
        group=args.group,
        lease=args.lease,
        lease_ttl_s=args.lease_ttl,
        max_sample_age_s=args.max_sample_age,
        command_ttl_s=args.command_ttl,
        intake_capacity=args.intake_capacity,
    )

    async def body(ctx: ServiceContext[DeciderMetrics]) -> None:
        decider = Decider(ctx, policy, rails, config, rules)
        watch_config(ctx, args, "decider", lambda new: decider.use_rules(build_rulebook(new, args.policy, params)))
        await decider.run()

    return run(options, DeciderMetrics("decider"), body)


def cmd_actuator(args: argparse.Namespace) -> int:
    from services.actuator.checks import parse_vm_bounds
    from services.actuator.service import Actuator, ActuatorConfig, ActuatorMetrics

    options = service_options(args, "actuator")
    vm_bounds = parse_vm_bounds(args.vm_bounds)
    config = ActuatorConfig(
        name=args.name,
        bounds=Bounds(args.min_vcpus, args.max_vcpus),
        vm_bounds=vm_bounds,
        step_timeout_s=args.step_timeout,
        max_changes=args.max_changes,
        rate_window_s=args.rate_window,
        ack_wait_s=args.ack_wait,
    )
    driver_config = DRIVERS.config(args.driver, vars(args))

    async def body(ctx: ServiceContext[ActuatorMetrics]) -> None:
        loaded = loaded_of(args)
        actuator = Actuator(
            ctx,
            DRIVERS.build(args.driver, driver_config, ctx),
            config,
            tuple(loaded.config.vm) if loaded else (),
            tuple(loaded.config.host) if loaded else (),
        )

        def use_rules(new: LoadedConfig) -> str:
            actuator.rules = tuple(new.config.vm)
            actuator.host_rules = tuple(new.config.host)
            return (
                f"{len(actuator.rules)} [[vm]] rules bound the VMs, "
                f"{len(actuator.host_rules)} [[host]] rules the host's capacity"
            )

        watch_config(ctx, args, "actuator", use_rules)
        await actuator.run()

    return run(options, ActuatorMetrics("actuator"), body)


def cmd_agent(args: argparse.Namespace) -> int:
    from services.collector.service import Collector, CollectorMetrics
    from services.collector.sources.guest import GuestSource

    if not args.vm:
        raise UsageError("agent needs --vm NAME (or vm in the config file's [agent] section)")
    options = service_options(args, "agent")

    async def body(ctx: ServiceContext[CollectorMetrics]) -> None:
        watch_config(ctx, args, "agent")
        source = GuestSource(args.vm, ctx.clock, online_new_cpus=not args.no_online)
        await Collector(ctx, source, args.interval).run()

    return run(options, CollectorMetrics("agent"), body)


def cmd_up(args: argparse.Namespace) -> int:
    from hotplug.up import UpOptions, run_up

    hypervisor = HYPERVISORS.get(args.hypervisor)
    values = vars(args)
    for other in HYPERVISORS.all():
        given = other.given(values) if other is not hypervisor else []
        if given:
            raise UsageError(f"{', '.join(given)}: options of --hypervisor {other.name}, not of {hypervisor.name}")
    if args.no_decider and (args.dry_run or args.param or args.policy):
        raise UsageError("--no-decider runs no decider: --policy, --param and --dry-run have none to go to")
    loaded = loaded_of(args)
    # The decider child reads the file too: without --policy (or [up] policy) its own section says.
    policy = args.policy or (loaded.config.decider.policy if loaded else None) or "default"
    options = UpOptions(
        vms=args.vms,
        duration_s=args.duration,
        speed=args.speed,
        policy=policy,
        params=tuple(args.param),
        data_dir=args.data_dir,
        nats_url=resolve_nats_url(args.nats),
        interval_s=args.interval,
        dry_run=args.dry_run,
        decider=not args.no_decider,
        view=not args.no_view,
        log_level=args.log_level,
        hypervisor=hypervisor.name,
        max_vcpus=args.max_vcpus,
        cluster=args.cluster,
        config=loaded.path.resolve() if loaded else None,
        own=hypervisor.own_from(values),
    )
    if options.cluster < 1 or (options.cluster > 1 and options.nats_url is not None):
        raise UsageError("--cluster takes a node count of at least 1, and only for the embedded broker (no --nats)")
    if hypervisor.prepare is not None:
        options = dataclasses.replace(
            options, own=hypervisor.prepare(hypervisor.own(options), options, loaded.config if loaded else None)
        )
    DRIVERS.check_speed(hypervisor.driver_name, options.speed, note="")
    own = msgspec.structs.asdict(hypervisor.own(options))
    DRIVERS.probe(hypervisor.driver_name, DRIVERS.config(hypervisor.driver_name, own))
    if options.decider:
        _check_policy(options.policy, options.params, loaded)
    asyncio.run(run_up(options))
    return 0


def _check_policy(policy: str, flags: tuple[str, ...], loaded: LoadedConfig | None) -> None:
    """Check the decider child's policy and its parameters here, before any process starts."""
    from services.decider.registry import build_policy, parse_params
    from services.decider.rulebook import build_rulebook

    params = parse_params([*_decider_params(loaded), *flags])
    build_policy(policy, params)
    build_rulebook(loaded, policy, params)


def _decider_params(loaded: LoadedConfig | None) -> list[str]:
    """The ``--param`` items the decider child takes from the file's [service]/[decider] sections."""
    from shared.config.schema import param_flags

    section = loaded.config.decider.param if loaded else None
    return param_flags(section) if section else []
