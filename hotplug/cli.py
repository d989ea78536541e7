"""The ``hotplug`` command: every service, ``up`` to run them all, and the tools to study a run."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from hotplug import pause_cmd
from shared import bus
from shared.clock import Clock, make_clock
from shared.messages import MESSAGE_TYPES
from shared.runtime import ServiceContext, ServiceOptions, resolve_nats_url, run_service, setup_logging
from shared.telemetry import ServiceMetrics


class UsageError(Exception):
    pass


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _levels(text: str) -> list[float]:
    try:
        levels = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected percentages separated by commas, got {text!r}") from None
    if not levels or levels[0] <= 0:
        raise argparse.ArgumentTypeError(f"levels must be positive percentages, got {text!r}")
    return levels


def _env(name: str, default: str) -> str:
    return os.environ.get(f"HOTPLUG_{name}", default)


def _service_parent() -> argparse.ArgumentParser:
    """Options every service takes; each defaults to an environment variable (for containers)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--nats", help=f"NATS URL (default: ${bus.DEFAULT_URL_ENV})")
    p.add_argument("--host", default=_env("HOST", "local"), help="hypervisor host name ($HOTPLUG_HOST; local)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "0")),
        help="Prometheus port ($HOTPLUG_METRICS_PORT; default: any free port)",
    )
    p.add_argument(
        "--metrics-addr",
        default=_env("METRICS_ADDR", "127.0.0.1"),
        help="address the metrics endpoint binds ($HOTPLUG_METRICS_ADDR; 127.0.0.1)",
    )
    p.add_argument(
        "--speed",
        type=_positive,
        default=float(_env("SPEED", "1")),
        help="simulated seconds per wall second ($HOTPLUG_SPEED)",
    )
    p.add_argument("--epoch", type=float, default=None, help="wall time at which simulated time starts")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    return p


def _libvirt_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--libvirt-uri", default=None, help="libvirt URI ($HOTPLUG_LIBVIRT_URI; default qemu:///system)")
    p.add_argument(
        "--libvirt-opt-in",
        action="store_true",
        help="libvirt: only domains whose hotplug metadata says enabled (hotplug libvirt prepare)",
    )


def _need_libvirt() -> None:
    """libvirt-python is an optional extra: say how to get it instead of a traceback."""
    from shared.libvirt.connection import LibvirtMissing, libvirt_module

    try:
        libvirt_module()
    except LibvirtMissing as exc:
        raise UsageError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotplug", description="Live vCPU hot-plug autoscaler for VMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    service = _service_parent()

    up = sub.add_parser("up", help="run broker, simulator, collector, decider and actuator together")
    up.add_argument(
        "--vms",
        type=int,
        default=None,
        help="simulator: VMs (default 6; with --trace, the first N of the trace's VMs by name, default "
        "all); qemu: guests to boot (default 6); libvirt: test domains to start for the run "
        "(default: none, the running domains are used)",
    )
    up.add_argument(
        "--trace",
        type=Path,
        default=None,
        metavar="FILE",
        help="simulated VMs follow this replay CSV (time_s,vm,demand_vcpus[,max_vcpus]) from the "
        "run's start, repeating at its end",
    )
    up.add_argument("--duration", type=_positive, default=None, help="stop after this many simulated seconds")
    up.add_argument("--speed", type=_positive, default=1.0, help="simulated seconds per wall second")
    up.add_argument("--policy", default="default")
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
        choices=["simulator", "virtualbox", "qemu", "libvirt"],
        default="simulator",
        help="virtualbox: the VMs VBoxManage lists as running ($HOTPLUG_VBOXMANAGE or PATH); "
        "qemu: --vms real guests booted for the run; libvirt: the running domains, or --vms "
        "test domains started for the run",
    )
    up.add_argument("--max-vcpus", type=int, default=4, help="qemu, libvirt: each guest's maximum (it boots with 1)")
    up.add_argument("--libvirt-uri", default=None, help="libvirt: the URI ($HOTPLUG_LIBVIRT_URI; qemu:///system)")
    up.add_argument("--seed", type=int, default=1)
    up.add_argument("--interval", type=_positive, default=1.0, help="sampling interval, simulated seconds")
    up.add_argument("--dry-run", action="store_true", help="decide and log, but command nothing")
    up.add_argument("--no-view", action="store_true", help="no live table (it is off anyway without a terminal)")
    up.add_argument("--log-level", default="INFO")

    sim = sub.add_parser("simulator", parents=[service], help="the simulated mini-cloud")
    sim.add_argument(
        "--vms",
        type=int,
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
    sim.add_argument("--hotplug-delay", type=float, default=0.3, help="simulated seconds per plug or unplug")
    sim.add_argument("--profiles", default="", help="comma-separated workload profiles to cycle through")
    sim.add_argument(
        "--max-vcpus",
        type=int,
        default=None,
        help="every VM's maximum (it boots with half); default: 4, 8, 16, 8 in turn",
    )

    col = sub.add_parser("collector", parents=[service], help="sample CPU use and publish metrics")
    col.add_argument("--source", choices=["simulator", "psutil", "virtualbox", "qemu", "libvirt"], default="simulator")
    _libvirt_options(col)
    col.add_argument(
        "--libvirt-domain",
        action="append",
        default=[],
        metavar="NAME",
        help="libvirt source: watch only this domain (repeatable; default: every running domain)",
    )
    col.add_argument("--interval", type=_positive, default=1.0)
    col.add_argument(
        "--process",
        action="append",
        default=[],
        metavar="VM=PID|VM=REGEX",
        help="psutil source: a host process to watch as a VM",
    )

    dec = sub.add_parser("decider", parents=[service], help="turn metrics into scale commands")
    dec.add_argument("--policy", default="default")
    dec.add_argument("--param", action="append", default=[], metavar="NAME.KEY=VALUE")
    dec.add_argument("--name", default="decider", help="this decider's name in commands")
    dec.add_argument("--dry-run", action="store_true", help="log what it would do; command nothing")
    dec.add_argument(
        "--lease", default=None, help="replicas with the same lease elect one active decider (commands carry its term)"
    )
    dec.add_argument("--lease-ttl", type=_positive, default=5.0, help="seconds a lease lasts without renewal")
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
    dec.add_argument("--max-sample-age", type=_positive, default=10.0)
    dec.add_argument(
        "--intake-capacity",
        type=int,
        default=100_000,
        metavar="VMS",
        help="VMs whose newest sample may wait at once; a flood sheds the oldest samples",
    )
    dec.add_argument("--command-ttl", type=_positive, default=30.0)

    act = sub.add_parser("actuator", parents=[service], help="execute scale commands on the hypervisor")
    act.add_argument("--driver", choices=["simulator", "virtualbox", "qemu", "libvirt"], default="simulator")
    _libvirt_options(act)
    act.add_argument("--name", default="actuator")
    act.add_argument("--min-vcpus", type=int, default=1)
    act.add_argument("--max-vcpus", type=int, default=1024)
    act.add_argument("--step-timeout", type=_positive, default=30.0)
    act.add_argument(
        "--vm-bounds",
        action="append",
        default=[],
        metavar="VM=MIN:MAX",
        help="this VM's own bounds (the last '=' separates the name); repeatable",
    )
    act.add_argument("--max-changes", type=int, default=6, help="resizes allowed per VM per --rate-window")
    act.add_argument("--rate-window", type=_positive, default=60.0, help="seconds (of the shared clock)")
    act.add_argument(
        "--ack-wait",
        type=_positive,
        default=60.0,
        help="seconds before an unacknowledged command is redelivered (e.g. after a crash)",
    )

    agent = sub.add_parser("agent", parents=[service], help="inside a Linux guest: publish its own CPU view")
    agent.add_argument("--vm", required=True, help="the VM's name as the hypervisor knows it")
    agent.add_argument("--interval", type=_positive, default=1.0)
    agent.add_argument("--no-online", action="store_true", help="do not bring newly plugged CPUs online")

    vbox = sub.add_parser("vbox", help="VirtualBox admin: prepare VMs for hot-plug, status, resize now")
    vsub = vbox.add_subparsers(dest="vbox_command", required=True)
    prep = vsub.add_parser("prepare", help="one-time set-up, VM powered off")
    prep.add_argument("vm")
    prep.add_argument("--max-vcpus", type=int, required=True)
    prep.add_argument("--start-vcpus", type=int, default=None)
    stat = vsub.add_parser("status", help="every VM with state, maximum and attached CPUs")
    stat.add_argument("--json", action="store_true")
    vset = vsub.add_parser("set", help="resize a running VM now")
    vset.add_argument("vm")
    vset.add_argument("--vcpus", type=int, required=True)

    qemu = sub.add_parser("qemu", help="real QEMU guests with live vCPU hot-plug (TCG)")
    qsub = qemu.add_subparsers(dest="qemu_command", required=True)
    qstart = qsub.add_parser("start", help="boot a guest (the image is built on first use)")
    qstart.add_argument("name")
    qstart.add_argument("--max-vcpus", type=int, required=True)
    qstart.add_argument("--vcpus", type=int, default=1)
    qstart.add_argument("--memory", type=int, default=256, help="MiB")
    qset = qsub.add_parser("set", help="resize a guest now")
    qset.add_argument("name")
    qset.add_argument("--vcpus", type=int, required=True)
    qload = qsub.add_parser("load", help="run N busy loops in the guest (0 stops them)")
    qload.add_argument("name")
    qload.add_argument("--busy", type=int, required=True)
    qstatus = qsub.add_parser("status", help="every guest: vCPUs as QMP sees them and as the guest does")
    qstatus.add_argument("--json", action="store_true")
    qstop = qsub.add_parser("stop")
    qstop.add_argument("name")

    lv = sub.add_parser("libvirt", help="libvirt domains: prepare, status, resize now; test domains for demos")
    lv.add_argument("--uri", default=None, help="libvirt URI ($HOTPLUG_LIBVIRT_URI; default qemu:///system)")
    lsub = lv.add_subparsers(dest="libvirt_command", required=True)
    lstart = lsub.add_parser("start", help="start a transient test domain from the project's guest image")
    lstart.add_argument("name")
    lstart.add_argument("--max-vcpus", type=int, required=True)
    lstart.add_argument("--vcpus", type=int, default=1)
    lstart.add_argument("--memory", type=int, default=256, help="MiB")
    lstop = lsub.add_parser("stop", help="destroy a test domain started by 'hotplug libvirt start'")
    lstop.add_argument("name")
    lset = lsub.add_parser("set", help="resize a running domain now")
    lset.add_argument("name")
    lset.add_argument("--vcpus", type=int, required=True)
    lload = lsub.add_parser("load", help="test domains: run N busy loops in the guest (0 stops them)")
    lload.add_argument("name")
    lload.add_argument("--busy", type=int, required=True)
    lstatus = lsub.add_parser("status", help="every domain: state, vCPUs as libvirt and as the guest sees them")
    lstatus.add_argument("--json", action="store_true")
    lprep = lsub.add_parser("prepare", help="one-time set-up of a shut-off domain for hot-plug")
    lprep.add_argument("name")
    lprep.add_argument("--max-vcpus", type=int, required=True)
    lprep.add_argument("--start-vcpus", type=int, default=None)
    lprep.add_argument("--min-vcpus", type=int, default=1)

    ev = sub.add_parser("events", help="print the event log (commands, results, pauses and resumes)")
    ev.add_argument("--data-dir", type=Path, default=None)
    ev.add_argument("--nats", default=None)
    ev.add_argument("--format", choices=["table", "jsonl", "csv"], default="table")

    sch = sub.add_parser("schema", help="write the JSON Schema of every message")
    sch.add_argument("--out", type=Path, default=None, help="directory (default: print one JSON document)")

    rpt = sub.add_parser("report", help="an HTML report of a run: plots per VM and the run's totals")
    rpt.add_argument("--data-dir", type=Path, default=None)
    rpt.add_argument("--nats", default=None)
    rpt.add_argument("--out", type=Path, required=True, help="the HTML file to write")

    cmp_ = sub.add_parser("compare", help="score shadow deciders' proposals against the demand that followed")
    cmp_.add_argument("--data-dir", type=Path, default=None)
    cmp_.add_argument("--nats", default=None)
    cmp_.add_argument("--json", action="store_true")

    rep = sub.add_parser("replay", help="score policies on recorded CPU traces against an oracle")
    rep.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="trace files or directories")
    rep.add_argument("--format", choices=["csv", "bitbrains", "planetlab"], required=True)
    rep.add_argument("--vm-size", type=int, default=None, help="planetlab: the vCPUs each VM was given")
    rep.add_argument("--step", type=_positive, default=None, help="seconds per trace step (default: 300)")
    rep.add_argument("--policy", default="all", help="all, or a comma-separated list of policy names")
    rep.add_argument("--param", action="append", default=[], metavar="NAME.KEY=VALUE")
    rep.add_argument("--pressure", action="store_true", help="let policies see demand beyond their vCPUs")
    rep.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rep.add_argument("--plot", type=Path, default=None, metavar="DIR", help="write PNG plots and a sweep here")
    rep.add_argument(
        "--frontier",
        action="store_true",
        help="sweep each policy's trade-off parameter; print its cost at each level of unmet demand",
    )
    rep.add_argument(
        "--levels",
        type=_levels,
        default=None,
        metavar="PCT,PCT,...",
        help="with --frontier: the levels of unmet demand, in %% (default 0.25,0.5,1,2,4,8)",
    )

    bench = sub.add_parser(
        "bench",
        help="benchmarks, printed as JSON: decider, loop, collector, replay; decisions (a table, or JSON with --json)",
    )
    bench.add_argument("which", choices=["decider", "loop", "collector", "replay", "decisions"])
    bench.add_argument(
        "--vms",
        type=int,
        default=None,
        help="decider: 1000 and 10000; loop: 4; collector: 10, 100 and 1000; decisions: 8 "
        "(with --trace: all of its VMs)",
    )
    bench.add_argument("--seconds", type=_positive, default=None, help="how long each measurement runs")
    bench.add_argument("--json", action="store_true", help="one line of JSON (default: indented)")
    bench.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="P",
        help="decisions: a policy to run, repeatable, or 'all' (default: default)",
    )
    bench.add_argument("--seeds", default=None, help="decisions: comma-separated simulator seeds (default: 11,12)")
    bench.add_argument(
        "--trace",
        type=Path,
        default=None,
        metavar="FILE",
        help="decisions: VMs follow this replay CSV instead of seeded profiles (each seed then runs the same trace)",
    )
    bench.add_argument(
        "--duration",
        type=_positive,
        default=3600.0,
        help="decisions: simulated seconds measured per seed (default 3600)",
    )
    bench.add_argument(
        "--speed", type=_positive, default=30.0, help="decisions: simulated seconds per wall second (default 30)"
    )
    bench.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="decisions: keep each run's event log and logs in DIR/<policy>-seed<seed>/",
    )

    chaos = sub.add_parser(
        "chaos", help="inject faults into a live loop (3-node cluster, one user per service) and report what survived"
    )
    chaos.add_argument("--json", action="store_true", help="print the report as JSON")
    chaos.add_argument("--vms", type=int, default=4)
    chaos.add_argument("--speed", type=_positive, default=4.0, help="simulated seconds per wall second")
    chaos.add_argument("--window", type=_positive, default=5.0, help="wall seconds the loop runs under each fault")
    chaos.add_argument("--nodes", type=int, default=3, help="NATS cluster nodes")
    chaos.add_argument("--only", default="", help="comma-separated faults to inject (default: all)")
    chaos.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the run's logs, credentials and streams here (default: a temporary directory)",
    )

    auth = sub.add_parser("auth", help="broker security: users, permissions, credentials")
    asub = auth.add_subparsers(dest="auth_command", required=True)
    ainit = asub.add_parser("init", help="write nats.conf (one user per service) and credentials/<user>.env")
    ainit.add_argument("--out", type=Path, required=True)
    ainit.add_argument("--hosts", default="local", help="comma-separated hypervisor hosts")
    ainit.add_argument("--address", default="127.0.0.1", help="the broker's address in the client URLs")
    ainit.add_argument("--port", default="4222", help="the broker's client port; a cluster's, comma-separated")
    ainit.add_argument("--tls", action="store_true", help="also make a CA and a server certificate (openssl)")

    streams = sub.add_parser("streams", help="create the streams, or bring them up to date (as the admin user)")
    streams.add_argument("--nats", default=None)

    pause_cmd.add_parsers(sub)

    load = sub.add_parser("load", help="pin a simulated VM's demand (cores), or 'clear' to restore its workload")
    load.add_argument("vm")
    load.add_argument("cores")
    load.add_argument("--nats", default=None)
    load.add_argument("--host", default="local")
    return parser


def _options(args: argparse.Namespace, name: str) -> ServiceOptions:
    url = resolve_nats_url(args.nats)
    if url is None:
        raise UsageError(f"{name} needs a NATS server: --nats URL or ${bus.DEFAULT_URL_ENV}")
    clock: Clock = make_clock(args.speed, args.epoch)
    return ServiceOptions(
        name=name,
        nats_url=url,
        host=args.host,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        clock=clock,
    )


def _run(options: ServiceOptions, metrics: ServiceMetrics, body: Callable[[ServiceContext], Awaitable[None]]) -> int:
    asyncio.run(run_service(options, body, metrics))
    return 0


def cmd_simulator(args: argparse.Namespace) -> int:
    from services.simulator.service import SimulatorConfig, SimulatorMetrics, SimulatorService

    options = _options(args, "simulator")
    if args.vms is not None and args.vms < 1:
        raise UsageError("--vms must be at least 1")
    if args.trace is not None:
        if args.profiles or args.max_vcpus is not None:
            raise UsageError("--trace gives each VM its demand and size; it excludes --profiles and --max-vcpus")
        _check_trace(args.trace)
    config = SimulatorConfig(
        vms=args.vms or 6,
        seed=args.seed,
        hotplug_delay_s=args.hotplug_delay,
        profiles=tuple(p for p in args.profiles.split(",") if p),
        max_vcpus=args.max_vcpus,
        trace=args.trace,
        trace_vms=args.vms,
    )

    async def body(ctx: ServiceContext) -> None:
        await SimulatorService(ctx, config).run()

    return _run(options, SimulatorMetrics("simulator"), body)


def _check_trace(path: Path) -> int:
    """Read a ``--trace`` file before anything starts, so a bad one fails at once with one line; its VM count."""
    from services.simulator.cloud import load_trace

    return len(load_trace(path))


def cmd_collector(args: argparse.Namespace) -> int:
    from services.collector.service import Collector, CollectorMetrics
    from services.collector.sources.base import Source
    from services.collector.sources.procs import ProcessSource, ProcessSpec
    from services.collector.sources.simulator import SimulatorSource

    options = _options(args, "collector")
    if args.source != "simulator" and args.speed != 1.0:
        raise UsageError("--speed applies to the simulator only; real sources run on the wall clock")
    specs = [ProcessSpec.parse(p) for p in args.process]
    if args.source == "libvirt":
        _need_libvirt()
    if args.source == "psutil" and not specs:
        raise UsageError("the psutil source needs at least one --process VM=PID|VM=REGEX")

    async def body(ctx: ServiceContext) -> None:
        source: Source
        if args.source == "simulator":
            source = SimulatorSource(ctx.nc, ctx.host)
        elif args.source == "virtualbox":
            from services.collector.sources.virtualbox import VirtualBoxSource
            from shared.virtualbox import VBoxManage

            source = VirtualBoxSource(VBoxManage(), ctx.clock)
        elif args.source == "qemu":
            from services.collector.sources.qemu import QemuSource

            source = QemuSource(ctx.clock)
        elif args.source == "libvirt":
            from services.collector.sources.libvirt import LibvirtSource

            source = LibvirtSource(
                ctx.clock,
                args.libvirt_uri,
                domains=args.libvirt_domain,
                opt_in=args.libvirt_opt_in,
                registry=ctx.metrics.registry,
            )
        else:
            source = ProcessSource(specs, ctx.clock)
        await Collector(ctx, source, args.interval).run()

    return _run(options, CollectorMetrics("collector"), body)


def cmd_decider(args: argparse.Namespace) -> int:
    from services.decider.registry import build_policy, parse_params
    from services.decider.service import Decider, DeciderConfig, DeciderMetrics

    options = _options(args, "decider")
    policy, rails = build_policy(args.policy, parse_params(args.param))
    if args.shadow and args.dry_run:
        raise UsageError("--shadow and --dry-run exclude each other")
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
    if config.intake_capacity < 1:
        raise UsageError("--intake-capacity must be at least 1")

    async def body(ctx: ServiceContext) -> None:
        await Decider(ctx, policy, rails, config).run()

    return _run(options, DeciderMetrics("decider"), body)


def cmd_actuator(args: argparse.Namespace) -> int:
    from services.actuator.checks import Bounds
    from services.actuator.drivers.base import Driver
    from services.actuator.drivers.simulator import SimulatorDriver
    from services.actuator.service import Actuator, ActuatorConfig, ActuatorMetrics

    options = _options(args, "actuator")
    vm_bounds = {}
    for item in args.vm_bounds:
        vm, sep, span = item.rpartition("=")
        low, colon, high = span.partition(":")
        if not sep or not vm or not colon or not low.isdigit() or not high.isdigit() or int(low) > int(high):
            raise UsageError(f"--vm-bounds takes VM=MIN:MAX with MIN <= MAX, got {item!r}")
        vm_bounds[vm] = Bounds(int(low), int(high))
    if args.max_changes < 1:
        raise UsageError("--max-changes must be at least 1")
    config = ActuatorConfig(
        name=args.name,
        bounds=Bounds(args.min_vcpus, args.max_vcpus),
        vm_bounds=vm_bounds,
        step_timeout_s=args.step_timeout,
        max_changes=args.max_changes,
        rate_window_s=args.rate_window,
        ack_wait_s=args.ack_wait,
    )

    if args.driver == "libvirt":
        _need_libvirt()
    if args.driver != "simulator" and args.speed != 1.0:
        raise UsageError("--speed applies to the simulator only; real hypervisors run on the wall clock")

    async def body(ctx: ServiceContext) -> None:
        driver: Driver
        if args.driver == "virtualbox":
            from services.actuator.drivers.virtualbox import VirtualBoxDriver

            driver = VirtualBoxDriver()
        elif args.driver == "qemu":
            from services.actuator.drivers.qemu import QemuDriver

            driver = QemuDriver()
        elif args.driver == "libvirt":
            from services.actuator.drivers.libvirt import LibvirtDriver

            driver = LibvirtDriver(args.libvirt_uri, opt_in=args.libvirt_opt_in)
        else:
            driver = SimulatorDriver(ctx.nc, ctx.host, ctx.clock)
        await Actuator(ctx, driver, config).run()

    return _run(options, ActuatorMetrics("actuator"), body)


def cmd_agent(args: argparse.Namespace) -> int:
    from services.collector.service import Collector, CollectorMetrics
    from services.collector.sources.guest import GuestSource

    options = _options(args, "agent")

    async def body(ctx: ServiceContext) -> None:
        source = GuestSource(args.vm, ctx.clock, online_new_cpus=not args.no_online)
        await Collector(ctx, source, args.interval).run()

    return _run(options, CollectorMetrics("agent"), body)


def cmd_vbox(args: argparse.Namespace) -> int:
    from hotplug import vbox_cmd
    from shared.virtualbox import VBoxError, VBoxManage

    vbox = VBoxManage()
    try:
        if args.vbox_command == "prepare":
            return asyncio.run(vbox_cmd.prepare(vbox, args.vm, args.max_vcpus, args.start_vcpus))
        if args.vbox_command == "status":
            return asyncio.run(vbox_cmd.status(vbox, args.json))
        from hotplug.resize import resize
        from services.actuator.drivers.virtualbox import VirtualBoxDriver

        return asyncio.run(resize(VirtualBoxDriver(vbox), args.vm, args.vcpus))
    except VBoxError as exc:
        print(f"{exc.code.value}: {exc.message}", file=sys.stderr)
        return 1


def cmd_qemu(args: argparse.Namespace) -> int:
    from hotplug import qemu_cmd
    from shared.qemu.image import ImageError
    from shared.qemu.vm import QemuError

    try:
        if args.qemu_command == "start":
            return qemu_cmd.start(args.name, args.max_vcpus, args.vcpus, args.memory)
        if args.qemu_command == "set":
            return qemu_cmd.set_vcpus(args.name, args.vcpus)
        if args.qemu_command == "load":
            return qemu_cmd.load(args.name, args.busy)
        if args.qemu_command == "status":
            return qemu_cmd.status(args.json)
        return qemu_cmd.stop(args.name)
    except (QemuError, ImageError) as exc:
        print(f"hotplug qemu {args.qemu_command}: {exc}", file=sys.stderr)
        return 1


def cmd_libvirt(args: argparse.Namespace) -> int:
    from hotplug import libvirt_cmd
    from shared.libvirt.connection import Connection, LibvirtMissing
    from shared.qemu.image import ImageError

    try:
        conn = Connection(args.uri)
        try:
            command = args.libvirt_command
            if command == "start":
                return libvirt_cmd.start(conn, args.name, args.max_vcpus, args.vcpus, args.memory)
            if command == "stop":
                return libvirt_cmd.stop(conn, args.name)
            if command == "set":
                return libvirt_cmd.set_vcpus(conn, args.name, args.vcpus)
            if command == "load":
                return libvirt_cmd.load(conn, args.name, args.busy)
            if command == "status":
                return libvirt_cmd.status(conn, args.json)
            return libvirt_cmd.prepare(conn, args.name, args.max_vcpus, args.start_vcpus, args.min_vcpus)
        finally:
            conn.close()
    except libvirt_cmd.LibvirtCommandError as exc:
        print(f"{exc.code or f'hotplug libvirt {args.libvirt_command}'}: {exc.message}", file=sys.stderr)
        return 1
    except (LibvirtMissing, ImageError) as exc:
        print(f"hotplug libvirt {args.libvirt_command}: {exc}", file=sys.stderr)
        return 1


def cmd_up(args: argparse.Namespace) -> int:
    from hotplug.up import UpOptions, run_up

    if args.vms is not None and args.vms < 1:
        raise UsageError("--vms must be at least 1")
    if args.trace is not None:
        if args.hypervisor != "simulator":
            raise UsageError("--trace drives simulated VMs; it needs --hypervisor simulator")
        args.trace = args.trace.resolve()  # the simulator child must find it whatever its working directory
        _check_trace(args.trace)
    vms, guests = (None, args.vms or 0) if args.hypervisor == "libvirt" else (args.vms, 0)
    options = UpOptions(
        vms=vms,
        libvirt_guests=guests,
        libvirt_uri=args.libvirt_uri,
        trace=args.trace,
        duration_s=args.duration,
        speed=args.speed,
        policy=args.policy,
        params=tuple(args.param),
        data_dir=args.data_dir,
        nats_url=resolve_nats_url(args.nats),
        seed=args.seed,
        interval_s=args.interval,
        dry_run=args.dry_run,
        view=not args.no_view,
        log_level=args.log_level,
        hypervisor=args.hypervisor,
        max_vcpus=args.max_vcpus,
        cluster=args.cluster,
    )
    if options.cluster < 1 or (options.cluster > 1 and options.nats_url is not None):
        raise UsageError("--cluster takes a node count of at least 1, and only for the embedded broker (no --nats)")
    if options.hypervisor != "simulator" and options.speed != 1.0:
        raise UsageError("--speed applies to the simulator only")
    if options.hypervisor == "virtualbox":
        from shared.virtualbox import find_vboxmanage

        find_vboxmanage()
    if options.hypervisor == "qemu":
        from shared.qemu.vm import find_qemu

        find_qemu()
    if options.hypervisor == "libvirt":
        _need_libvirt()
        from shared.libvirt.connection import Connection

        probe = Connection(options.libvirt_uri)
        try:
            probe.run(lambda conn: conn.getLibVersion())  # a clear error now, not in three children's logs
        except probe.libvirt.libvirtError as exc:
            raise UsageError(f"libvirt at {probe.uri}: {exc}") from exc
        finally:
            probe.close()
    # Check the policy and its parameters here, before any process starts.
    from services.decider.registry import build_policy, parse_params

    build_policy(options.policy, parse_params(list(options.params)))
    asyncio.run(run_up(options))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from hotplug.events import event_record, format_csv, format_jsonl

    async def collect(url: str) -> list[dict[str, object]]:
        nc = await bus.connect(url, "hotplug-events", forever=False)
        try:
            from hotplug.events import read_all_events

            records = []
            async for subject, event in read_all_events(nc.jetstream()):
                if event is None:
                    print(f"skipped an undecodable event on {subject}", file=sys.stderr)
                else:
                    records.append(event_record(event))
            return records
        finally:
            await nc.close()

    records = _with_stream_access(args, collect)
    if args.format == "jsonl":
        sys.stdout.write(format_jsonl(records))
    elif args.format == "csv":
        sys.stdout.write(format_csv(records))
    else:
        _print_event_table(records)
    return 0


def _print_event_table(records: list[dict[str, object]]) -> None:
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(records)} events")
    for column in ("time (UTC)", "kind", "host", "vm", "id", "change", "detail"):
        table.add_column(column)
    for r in records:
        when = datetime.fromtimestamp(float(r["time"]), tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]  # type: ignore[arg-type]
        if r["kind"] == "command":
            table.add_row(
                when,
                "command",
                str(r["host"]),
                str(r["vm"]),
                str(r["id"]),
                f"{r['seen_vcpus']}→{r['target_vcpus']}",
                str(r["reason"]),
            )
        elif r["kind"] in ("pause", "resume"):
            from shared.pauses import when as pause_end

            end = "until resumed" if r["until"] is None else f"until {pause_end(float(r['until']))}"  # type: ignore[arg-type]
            if r["kind"] == "resume":
                detail = f"by {r['by']}, lifting a pause {end}"
            else:
                detail = f"by {r['by']} {end}" + (f": {r['reason']}" if r["reason"] else "")
            table.add_row(when, str(r["kind"]), str(r["host"]), str(r["vm"]), str(r["id"]), "", detail)
        else:
            detail = "ok" if r["ok"] else f"{r['error_code']}: {r['error']}"
            table.add_row(
                when,
                "result",
                str(r["host"]),
                str(r["vm"]),
                str(r["command_id"]),
                f"{r['vcpus_before']}→{r['vcpus_after']}",
                detail,
            )
    Console().print(table)


def cmd_schema(args: argparse.Namespace) -> int:
    schemas = {t.__name__: msgspec.json.schema(t) for t in MESSAGE_TYPES}
    if args.out is None:
        print(json.dumps(schemas, indent=2))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas.items():
        path = args.out / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2) + "\n")
        print(path)
    return 0


def _with_stream_access(args: argparse.Namespace, work: Callable[[str], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``work(url)`` against ``--nats``/$HOTPLUG_NATS_URL, or the data dir's broker (live or private)."""
    from hotplug.events import broker_for

    url = resolve_nats_url(args.nats)
    if url is not None and args.data_dir is None:
        return asyncio.run(work(url))
    with broker_for(args.data_dir or Path(".hotplug")) as data_url:
        return asyncio.run(work(data_url))


async def _read_run(url: str) -> tuple[list[Any], list[Any], list[Any]]:
    """Metric samples, commands and results of a run, from its streams."""
    from hotplug.events import read_events
    from shared import subjects
    from shared.bus import read_stream
    from shared.codec import BadMessage, Decoder
    from shared.messages import MetricSample, ScaleCommand

    samples, commands, results = [], [], []
    decoder = Decoder(MetricSample)
    nc = await bus.connect(url, "hotplug-read", forever=False)
    try:
        async for _, data in read_stream(nc.jetstream(), subjects.METRICS_STREAM, [subjects.ALL_METRICS]):
            try:
                samples.append(decoder.decode(data))
            except BadMessage:
                continue
        async for _, event in read_events(nc.jetstream()):
            if isinstance(event, ScaleCommand):
                commands.append(event)
            elif event is not None:
                results.append(event)
    finally:
        await nc.close()
    return samples, commands, results


def cmd_report(args: argparse.Namespace) -> int:
    from hotplug.report import assemble, render_html

    samples, commands, results = _with_stream_access(args, _read_run)
    data = assemble(samples, commands, results)
    args.out.write_text(render_html(data))
    s = data.summary()
    print(f"{args.out}: {s['vms']} VMs, {s['commands']} commands, {s['results_ok']} ok / {s['results_failed']} failed")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from hotplug.replay_cmd import render_table
    from services.decider.shadow import score_shadows
    from shared import subjects
    from shared.bus import read_stream
    from shared.codec import BadMessage, Decoder
    from shared.messages import MetricSample, ScaleCommand

    async def collect(url: str) -> tuple[list[MetricSample], list[ScaleCommand]]:
        samples, proposals = [], []
        sample_decoder, proposal_decoder = Decoder(MetricSample), Decoder(ScaleCommand)
        nc = await bus.connect(url, "hotplug-compare", forever=False)
        try:
            async for subject, data in read_stream(
                nc.jetstream(), subjects.METRICS_STREAM, [subjects.ALL_METRICS, subjects.ALL_PROPOSALS]
            ):
                try:
                    if subject.startswith(subjects.PROPOSALS):
                        proposals.append(proposal_decoder.decode(data))
                    else:
                        samples.append(sample_decoder.decode(data))
                except BadMessage:
                    continue
        finally:
            await nc.close()
        return samples, proposals

    samples, proposals = _with_stream_access(args, collect)
    if not proposals:
        print("no shadow proposals found: run a decider with --shadow beside the active one", file=sys.stderr)
    report = {
        "vms": len({(s.host, s.vm) for s in samples}),
        "steps": len(samples),
        "policies": score_shadows(samples, proposals),
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        render_table(report, f"{report['vms']} VMs, {report['steps']} samples: active allocation vs shadows")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from hotplug.replay_cmd import (
        frontier_report,
        policy_names,
        render_frontier,
        render_table,
        replay_table,
        sweep,
        write_plots,
    )
    from services.decider.frontier import DEFAULT_LEVELS
    from services.decider.registry import parse_params
    from services.decider.traces import load

    names = policy_names(args.policy)
    params = parse_params(args.param)
    unknown = set(params) - set(names) - {"guard"}
    if unknown:
        raise UsageError(f"--param names {', '.join(sorted(unknown))}, which is not among the replayed policies")
    series = load(args.paths, args.format, vm_size=args.vm_size, step_s=args.step)
    if not series:
        raise UsageError("no VM series found in the given paths")
    if args.levels is not None and not args.frontier:
        raise UsageError("--levels goes with --frontier")
    if args.frontier:
        levels = args.levels or list(DEFAULT_LEVELS)
        frontier = frontier_report(series, names, params, args.pressure, levels)
        if args.json:
            print(json.dumps(frontier, indent=1))
        else:
            render_frontier(
                frontier,
                f"{frontier['vms']} VMs, {frontier['steps']} steps"
                f"{' (with pressure)' if args.pressure else ''}: cost at each level of unmet "
                "demand, from a sweep of each policy's trade-off parameter",
            )
        return 0
    report = replay_table(series, names, params, args.pressure)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        render_table(
            report, f"{report['vms']} VMs, {report['steps']} steps{' (with pressure)' if args.pressure else ''}"
        )
    if args.plot is not None:
        for path in write_plots(
            args.plot, series, names, params, args.pressure, sweep(series, names, params, args.pressure), report
        ):
            print(path, file=sys.stderr)
    return 0


def cmd_auth(args: argparse.Namespace) -> int:
    from hotplug.auth import write

    hosts = [h for h in args.hosts.split(",") if h]
    try:
        ports = [int(p) for p in args.port.split(",") if p]
    except ValueError:
        raise UsageError(f"--port takes port numbers, comma-separated, not {args.port!r}") from None
    for path in write(args.out, hosts, args.address, ports, args.tls):
        print(path)
    print(
        f"start the broker with -c {args.out / 'nats.conf'}; create the streams once as admin:\n"
        f"  env $(cat {args.out / 'credentials' / 'admin.env'}) hotplug streams\n"
        f"then start each service with its own credentials, e.g. "
        f"env $(cat {args.out / 'credentials' / 'decider.env'}) hotplug decider",
        file=sys.stderr,
    )
    return 0


def cmd_chaos(args: argparse.Namespace) -> int:
    from hotplug.chaos import FAULTS, ChaosOptions, print_report, run_chaos

    only = tuple(f for f in args.only.split(",") if f)
    if set(only) - set(FAULTS):
        raise UsageError(f"unknown fault in --only; choose from {', '.join(FAULTS)}")
    if args.nodes < 1 or args.vms < 4:
        raise UsageError("chaos needs at least one node and four VMs")
    options = ChaosOptions(
        vms=args.vms, speed=args.speed, window_s=args.window, nodes=args.nodes, data_dir=args.data_dir, only=only
    )
    report = asyncio.run(run_chaos(options, progress=lambda line: print(line, file=sys.stderr, flush=True)))
    if args.json:
        print(msgspec.json.encode(report).decode())
    else:
        print_report(report)
    return 0 if report.ok else 1


def cmd_streams(args: argparse.Namespace) -> int:
    url = resolve_nats_url(args.nats)
    if url is None:
        raise UsageError(f"streams needs a NATS server: --nats URL or ${bus.DEFAULT_URL_ENV}")

    async def create() -> None:
        nc = await bus.connect(url, "hotplug-streams", forever=False)
        try:
            await bus.ensure_streams(nc.jetstream(), reconcile=True)
        finally:
            await nc.close()

    asyncio.run(create())
    print("streams ready")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from shared import subjects
    from shared.sim_api import LoadReply, LoadRequest

    url = resolve_nats_url(args.nats)
    if url is None:
        raise UsageError(f"load needs a NATS server: --nats URL or ${bus.DEFAULT_URL_ENV}")
    cores = None if args.cores == "clear" else float(args.cores)

    async def send() -> LoadReply:
        nc = await bus.connect(url, "hotplug-load", forever=False)
        try:
            request = msgspec.json.encode(LoadRequest(vm=args.vm, demand_cores=cores))
            reply = await nc.request(subjects.simulator(args.host, "load"), request, timeout=5)
            return msgspec.json.decode(reply.data, type=LoadReply)
        finally:
            await nc.close()

    reply = asyncio.run(send())
    if not reply.ok:
        print(f"load refused: {reply.error}", file=sys.stderr)
        return 1
    print(f"{args.vm}: demand {'restored to its workload' if cores is None else f'pinned at {cores} cores'}")
    return 0


def _bench_decisions(args: argparse.Namespace) -> int:
    from hotplug.bench.decisions import DEFAULT_SEEDS, DecisionsOptions, bench_decisions, render_table
    from hotplug.replay_cmd import policy_names

    policies = policy_names(",".join(args.policy) if args.policy else "default")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip()) if args.seeds else DEFAULT_SEEDS
    except ValueError:
        raise UsageError(f"--seeds takes whole numbers, comma-separated, not {args.seeds!r}") from None
    if not seeds:
        raise UsageError("--seeds names no seed")
    if args.vms is not None and args.vms < 1:
        raise UsageError("--vms must be at least 1")
    if args.trace is not None:
        args.trace = args.trace.resolve()
        _check_trace(args.trace)
    options = DecisionsOptions(
        policies=tuple(policies),
        seeds=seeds,
        duration_s=args.duration,
        speed=args.speed,
        vms=args.vms,
        trace=args.trace,
        data_dir=args.data_dir,
    )
    report = bench_decisions(options, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(report))
    else:
        render_table(report)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    out: object
    if args.which == "decisions":
        return _bench_decisions(args)
    if args.which == "decider":
        from hotplug.bench.decider import bench_decider

        sizes = [args.vms] if args.vms else [1000, 10000]
        runs = [bench_decider(n, args.seconds or 8.0) for n in sizes]
        out = runs[0] if len(runs) == 1 else {"bench": "decider", "runs": runs, **runs[-1]}
    elif args.which == "loop":
        from hotplug.bench.loop import bench_loop

        out = bench_loop(args.vms or 4)
    elif args.which == "collector":
        from hotplug.bench.collector import bench_collector

        out = bench_collector((args.vms,) if args.vms else (10, 100, 1000), args.seconds or 10.0)
    else:
        from hotplug.bench.replay import bench_replay

        out = bench_replay()
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": cmd_up,
    "simulator": cmd_simulator,
    "collector": cmd_collector,
    "decider": cmd_decider,
    "actuator": cmd_actuator,
    "agent": cmd_agent,
    "events": cmd_events,
    "schema": cmd_schema,
    "load": cmd_load,
    "replay": cmd_replay,
    "compare": cmd_compare,
    "report": cmd_report,
    "bench": cmd_bench,
    "vbox": cmd_vbox,
    "qemu": cmd_qemu,
    "libvirt": cmd_libvirt,
    "auth": cmd_auth,
    "streams": cmd_streams,
    "chaos": cmd_chaos,
    **pause_cmd.COMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", "WARNING"))
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except (UsageError, ValueError, FileNotFoundError) as exc:
        print(f"hotplug {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
