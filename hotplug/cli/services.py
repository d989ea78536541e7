"""Commands that run the services: ``up`` (all of them at once), ``simulator``, ``collector``, ``decider``,
``actuator`` and ``agent``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from hotplug.cli.common import (
    Subparsers,
    add_command,
    check_arrivals,
    check_trace,
    run,
    service_options,
    settings_flags,
)
from hotplug.config import add_config_option, epilog, loaded_of, watch_config
from hotplug.hypervisors import HYPERVISORS
from services.actuator.checks import Bounds
from services.actuator.drivers.registry import DRIVERS
from services.collector.sources.registry import SOURCES
from shared.config.load import LoadedConfig
from shared.config.schema import SETTINGS, UpSettings, memory_bytes_of
from shared.config.settings import add_flags, specs
from shared.errors import UsageError
from shared.plugins import Registry
from shared.runtime import ServiceContext, resolve_nats_url

if TYPE_CHECKING:
    from services.simulator.scenario import SimulatorConfig

log = logging.getLogger(__name__)

ORDER = 10  # first in ``hotplug --help``


# The services' commands: their flags and config-file sections come from their settings (shared.config.schema).
SERVICE_COMMANDS = (
    ("simulator", "the simulated mini-cloud"),
    ("collector", "sample CPU use and publish metrics"),
    ("decider", "turn metrics into scale commands"),
    ("actuator", "execute scale commands on the hypervisor"),
    ("agent", "inside a Linux guest: publish its own CPU view"),
)


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    up = add_command(
        sub, "up", cmd_up, epilog=epilog("up"), help="run broker, simulator, collector, decider and actuator together"
    )
    add_config_option(up)
    hypervisors = HYPERVISORS.all()
    # up's flags are its settings' (UpSettings), then each hypervisor record's own options (HYPERVISORS'
    # option_specs); the hypervisors' lines come from the records, so a new hypervisor edits nothing here.
    described = {
        "vms": "the run's VMs, as the hypervisor makes them: "
        + "; ".join(f"{h.name}: {h.vms}" for h in hypervisors if h.vms is not None),
        "hypervisor": "; ".join(h.summary for h in hypervisors),
    }
    add_flags(
        up,
        [
            dataclasses.replace(spec, description=described.get(spec.name, spec.description))
            for spec in specs(UpSettings)
        ],
        {"hypervisor": lambda: [h.name for h in hypervisors]},
    )
    add_flags(up, HYPERVISORS.option_specs())

    handlers = {
        "simulator": cmd_simulator,
        "collector": cmd_collector,
        "decider": cmd_decider,
        "actuator": cmd_actuator,
        "agent": cmd_agent,
    }
    plugins: dict[str, Registry[Any]] = {"collector": SOURCES, "actuator": DRIVERS}
    choices = {"source": SOURCES.names, "driver": DRIVERS.names}
    for name, what in SERVICE_COMMANDS:
        parser = add_command(sub, name, handlers[name], epilog=epilog(name), help=what)
        add_config_option(parser)
        settings_flags(parser, SETTINGS[name], choices, plugins.get(name))


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
        host_memory_bytes=_host_memory(args.host_memory),
        memory_overcommit=args.host_memory_overcommit,
    )


def _host_memory(value: str | None) -> int | None:
    """``--host-memory`` in bytes; a bad size is the command's usage error."""
    try:
        return memory_bytes_of("--host-memory", value)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def cmd_collector(args: argparse.Namespace) -> int:
    from services.collector.service import Collector, CollectorMetrics

    options = service_options(args, "collector")
    config = SOURCES.config(args.source, vars(args))

    async def body(ctx: ServiceContext[CollectorMetrics]) -> None:
        loaded = loaded_of(args)
        source = SOURCES.build(args.source, config, ctx)
        collector = Collector(
            ctx,
            source,
            args.interval,
            host_rules=loaded.config.host if loaded else (),
            watch_pressure=not args.no_urgent,
        )
        watch_config(ctx, args, "collector", lambda new: collector.use_host_rules(new.config.host))
        await collector.run()

    return run(options, CollectorMetrics("collector"), body)


def cmd_decider(args: argparse.Namespace) -> int:
    from services.decider.registry import build_memory_policy, build_policy, parse_params
    from services.decider.rulebook import build_rulebook
    from services.decider.service import Decider, DeciderConfig, DeciderMetrics

    options = service_options(args, "decider")
    params = parse_params(args.param)
    policy, rails = build_policy(args.policy, params)
    memory_policy = build_memory_policy(params)
    rules = build_rulebook(loaded_of(args), args.policy, params)
    config = DeciderConfig(
        name=args.name,
        dry_run=args.dry_run,
        cpu_only=args.cpu_only,
        shadow=args.shadow,
        group=args.group,
        lease=args.lease,
        lease_ttl_s=args.lease_ttl,
        max_sample_age_s=args.max_sample_age,
        command_ttl_s=args.command_ttl,
        intake_capacity=args.intake_capacity,
    )

    async def body(ctx: ServiceContext[DeciderMetrics]) -> None:
        decider = Decider(ctx, policy, rails, config, rules, memory_policy)
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
    from services.collector.urgent import TriggerSpec

    if not args.vm:
        raise UsageError("agent needs --vm NAME (or vm in the config file's [agent] section)")
    try:
        spec = None if args.no_urgent else TriggerSpec(args.urgent_stall, args.urgent_window)
    except ValueError as exc:
        raise UsageError(f"agent: {exc}") from None
    options = service_options(args, "agent")

    async def body(ctx: ServiceContext[CollectorMetrics]) -> None:
        watch_config(ctx, args, "agent")
        source = GuestSource(args.vm, ctx.clock, online_new_cpus=not args.no_online, trigger=spec)
        # the PSI trigger is the source's watch for pressure: the collector starts it, as it does the qemu source's
        await Collector(ctx, source, args.interval, watch_pressure=spec is not None).run()

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
    from services.decider.registry import build_memory_policy, build_policy, parse_params
    from services.decider.rulebook import build_rulebook

    params = parse_params([*_decider_params(loaded), *flags])
    build_policy(policy, params)
    build_memory_policy(params)
    build_rulebook(loaded, policy, params)


def _decider_params(loaded: LoadedConfig | None) -> list[str]:
    """The ``--param`` items the decider child takes from the file's [service]/[decider] sections."""
    from shared.config.schema import param_flags

    section = loaded.config.decider.param if loaded else None
    return param_flags(section) if section else []
