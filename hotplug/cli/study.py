"""Commands that study policies and the loop: ``replay`` (traces against an oracle), ``bench`` and ``chaos``.

Parsing and formatting only: the work is the ``evaluation`` package's (``docs/evaluation.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from evaluation.bench import LOOP_GUESTS, MEMORY_GUESTS
from hotplug.cli.common import Subparsers, add_command, at_least_one, check_trace, mebibytes, positive
from shared.errors import UsageError
from shared.memory_traces import MEMORY_FORMATS
from shared.traces import FORMATS

ORDER = 40


def _levels(text: str) -> list[float]:
    try:
        levels = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected percentages separated by commas, got {text!r}") from None
    if not levels or levels[0] <= 0:
        raise argparse.ArgumentTypeError(f"levels must be positive percentages, got {text!r}")
    return levels


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    rep = add_command(
        sub, "replay", cmd_replay, help="score policies on recorded CPU or memory traces against an oracle"
    )
    rep.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="trace files or directories")
    rep.add_argument("--format", choices=(*FORMATS, *MEMORY_FORMATS), required=True)
    rep.add_argument(
        "--resource",
        choices=("cpu", "memory"),
        default="cpu",
        help="cpu: the vCPU policies; memory: the memory policy and its baselines, on each half of the VMs "
        "(a memory format; --param memory.KEY=VALUE) (default: cpu)",
    )
    rep.add_argument("--vm-size", type=int, default=None, help="planetlab: the vCPUs each VM was given")
    rep.add_argument("--step", type=positive, default=None, help="seconds per trace step (default: 300)")
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
        help="with --frontier: the levels of unmet demand, in %% (default 0.25,0.5,1,2,4,8; memory: of VM-samples "
        "short, 0.01,0.05,0.1,0.5,1)",
    )

    bench = add_command(
        sub,
        "bench",
        cmd_bench,
        help="benchmarks, printed as JSON: decider, loop, collector, replay, memory; decisions and pool (a table, "
        "or JSON with --json)",
    )
    bench.add_argument("which", choices=["decider", "loop", "collector", "replay", "decisions", "pool", "memory"])
    bench.add_argument(
        "--vms",
        type=at_least_one,
        default=None,
        help="decider: 1000 and 10000; loop: 4 (--guest qemu: 1); collector: 10, 100 and 1000; decisions: 8 "
        "(with --trace: all of its VMs)",
    )
    bench.add_argument(
        "--guest",
        choices=LOOP_GUESTS,
        default=None,
        help="loop: the VMs a load step is put on: the simulator's, or real QEMU guests booted for the run, "
        "directly or as libvirt domains (libvirt's daemons must run) (default: simulator); memory: qemu only",
    )
    bench.add_argument(
        "--trials",
        type=at_least_one,
        default=None,
        help="loop: load steps measured (default 20); memory: grow/give-back cycles per device (default 10)",
    )
    bench.add_argument("--seconds", type=positive, default=None, help="how long each measurement runs")
    bench.add_argument("--json", action="store_true", help="one line of JSON (default: indented)")
    bench.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="P",
        help="decisions, pool: a policy to run, repeatable, or 'all' (default: default)",
    )
    bench.add_argument(
        "--seeds",
        default=None,
        help="decisions: comma-separated simulator seeds (default: 11,12); pool: arrival seeds (default: 101,102)",
    )
    bench.add_argument(
        "--rates",
        default=None,
        help="pool: comma-separated arrival rates in jobs per hour (default: the busy rate, at which fixed sizes "
        "commit 90%% of the host, and four times it)",
    )
    bench.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="decisions, pool, replay: a policy parameter for the runs of that policy (pool: default's also for "
        "default+priorities; memory.KEY the memory rule's), as replay takes it",
    )
    bench.add_argument("--cores", type=at_least_one, default=None, help="pool: the host's cores (default 48)")
    bench.add_argument(
        "--hours", type=positive, default=None, help="pool: simulated hours of arrivals per run (default 4)"
    )
    bench.add_argument(
        "--host-memory",
        type=mebibytes,
        default=None,
        metavar="SIZE",
        help="pool: the host's memory for its VMs (e.g. 256GiB): jobs wait for it and the decider's memory ledger "
        "plans grows within it (default: not limited)",
    )
    bench.add_argument(
        "--trace",
        type=Path,
        default=None,
        metavar="FILE",
        help="decisions: VMs follow this replay CSV instead of seeded profiles (each seed then runs the same trace)",
    )
    bench.add_argument(
        "--duration",
        type=positive,
        default=3600.0,
        help="decisions: simulated seconds measured per seed (default 3600)",
    )
    bench.add_argument(
        "--speed", type=positive, default=30.0, help="decisions: simulated seconds per wall second (default 30)"
    )
    bench.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="decisions: keep each run's event log and logs in DIR/<policy>-seed<seed>/",
    )
    bench.add_argument(
        "--no-urgent",
        action="store_true",
        help="decisions: the collector sends regular samples only (its --no-urgent): no urgent round when a "
        "simulated guest's PSI trigger fires",
    )

    chaos = add_command(
        sub,
        "chaos",
        cmd_chaos,
        help="inject faults into a live loop (3-node cluster, one user per service) and report what survived",
    )
    chaos.add_argument("--json", action="store_true", help="print the report as JSON")
    chaos.add_argument("--vms", type=int, default=4)
    chaos.add_argument("--speed", type=positive, default=4.0, help="simulated seconds per wall second")
    chaos.add_argument("--window", type=positive, default=5.0, help="wall seconds the loop runs under each fault")
    chaos.add_argument("--nodes", type=int, default=3, help="NATS cluster nodes")
    chaos.add_argument("--only", default="", help="comma-separated faults to inject (default: all)")
    chaos.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the run's logs, credentials and streams here (default: a temporary directory)",
    )


def _replay_memory(args: argparse.Namespace) -> int:
    from evaluation.memory_render import render_memory_frontier, render_memory_table
    from evaluation.memory_replay import DEFAULT_LEVELS, frontier_report, replay_report
    from services.decider.memory import memory_settings
    from services.decider.registry import parse_params
    from shared.memory_traces import load_memory

    if args.format not in MEMORY_FORMATS:
        raise UsageError(f"--resource memory reads a memory format ({', '.join(MEMORY_FORMATS)}), not {args.format}")
    if args.vm_size is not None or args.pressure or args.plot is not None or args.policy != "all":
        raise UsageError("--vm-size, --pressure, --plot and --policy are for --resource cpu")
    if args.levels is not None and not args.frontier:
        raise UsageError("--levels goes with --frontier")
    params = parse_params(args.param)
    if set(params) - {"memory"}:
        raise UsageError(
            f"--param names {', '.join(sorted(set(params) - {'memory'}))}; with --resource memory only memory"
        )
    settings = memory_settings(params.get("memory"))
    series = load_memory(args.paths, args.format, step_s=args.step)
    if not series:
        raise UsageError("no VM series found in the given paths")
    if args.frontier:
        report = frontier_report(series, settings, args.levels or DEFAULT_LEVELS)
        print(json.dumps(report, indent=1) if args.json else render_memory_frontier(report))
    else:
        report = replay_report(series, settings)
        print(json.dumps(report, indent=1) if args.json else render_memory_table(report))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    if args.resource == "memory":
        return _replay_memory(args)
    if args.format in MEMORY_FORMATS:
        raise UsageError(f"--format {args.format} is a memory trace: add --resource memory")
    from evaluation.frontier import DEFAULT_LEVELS
    from evaluation.render import render_frontier, render_table, write_plots
    from evaluation.sweep import frontier_report, policy_names, policy_params, replay_table, sweep
    from shared.traces import load

    names = policy_names(args.policy)
    params = policy_params(args.param, names, "replayed")
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


def cmd_chaos(args: argparse.Namespace) -> int:
    from evaluation.chaos import FAULTS, ChaosOptions, print_report, run_chaos

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


def _numbers(text: str | None, flag: str, default: tuple[float, ...], kind: type = int) -> tuple[Any, ...]:
    """A comma-separated list of positive numbers given to ``flag``, or ``default``."""
    if text is None:
        return default
    try:
        values = tuple(kind(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"{flag} takes numbers, comma-separated, not {text!r}") from None
    if not values:
        raise UsageError(f"{flag} names nothing")
    if kind is float and any(not (v > 0) or v == float("inf") for v in values):
        raise UsageError(f"{flag} takes positive numbers, not {text!r}")
    return values


def _bench_pool(args: argparse.Namespace) -> int:
    from evaluation.bench.pool import (
        DEFAULT_CORES,
        DEFAULT_SEEDS,
        DEFAULT_SPAN_S,
        PoolOptions,
        bench_pool,
        render_table,
    )
    from evaluation.sweep import policy_names, policy_params
    from services.decider.registry import MEMORY_SCOPE
    from shared.units import MIB

    policies = tuple(policy_names(",".join(args.policy) if args.policy else "default"))
    # default's parameters also reach the default+priorities setup; memory.* reach every decided setup's memory rule
    params = policy_params(args.param, {*policies, "default", MEMORY_SCOPE}, "benchmarked")
    options = PoolOptions(
        policies=policies,
        params=params,
        seeds=_numbers(args.seeds, "--seeds", DEFAULT_SEEDS),
        cores=args.cores or DEFAULT_CORES,
        span_s=args.hours * 3600 if args.hours else DEFAULT_SPAN_S,
        rates=_numbers(args.rates, "--rates", (), float) or None,
        host_memory_bytes=None if args.host_memory is None else args.host_memory * MIB,
    )
    report = bench_pool(options, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(report) if args.json else render_table(report))
    return 0


def _bench_decisions(args: argparse.Namespace) -> int:
    from evaluation.bench.decisions import DEFAULT_SEEDS, DecisionsOptions, bench_decisions, render_table
    from evaluation.sweep import policy_names, policy_params
    from services.decider.registry import MEMORY_SCOPE

    policies = policy_names(",".join(args.policy) if args.policy else "default")
    # refused here, before any process starts; memory.* reach every run's decider (its memory rule)
    policy_params(args.param, [*policies, MEMORY_SCOPE], "benchmarked")
    seeds = _numbers(args.seeds, "--seeds", DEFAULT_SEEDS)
    if args.trace is not None:
        args.trace = args.trace.resolve()
        check_trace(args.trace)
    options = DecisionsOptions(
        policies=tuple(policies),
        seeds=seeds,
        duration_s=args.duration,
        speed=args.speed,
        vms=args.vms,
        trace=args.trace,
        data_dir=args.data_dir,
        params=tuple(args.param),
        urgent=not args.no_urgent,
    )
    report = bench_decisions(options, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(report))
    else:
        render_table(report)
    return 0


def _bench_memory(args: argparse.Namespace) -> int:
    guest = args.guest or MEMORY_GUESTS[0]
    if guest not in MEMORY_GUESTS:
        raise UsageError(f"bench memory runs on real guests only: --guest {' or '.join(MEMORY_GUESTS)}")
    from evaluation.bench.memory import BenchError, bench_memory
    from shared.qemu.image import ImageError
    from shared.qemu.vm import QemuError

    try:
        out = bench_memory(args.trials or 10)
    except (BenchError, QemuError, ImageError) as exc:
        print(f"hotplug bench memory: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    out: object
    if args.which == "decisions":
        return _bench_decisions(args)
    if args.which == "pool":
        return _bench_pool(args)
    if args.which == "decider":
        from evaluation.bench.decider import bench_decider

        sizes = [args.vms] if args.vms else [1000, 10000]
        runs = [bench_decider(n, args.seconds or 8.0) for n in sizes]
        out = runs[0] if len(runs) == 1 else {"bench": "decider", "runs": runs, **runs[-1]}
    elif args.which == "loop":
        from evaluation.bench.loop import bench_loop

        out = bench_loop(args.vms, args.trials or 20, args.guest or "simulator")
    elif args.which == "memory":
        return _bench_memory(args)
    elif args.which == "collector":
        from evaluation.bench.collector import bench_collector

        out = bench_collector((args.vms,) if args.vms else (10, 100, 1000), args.seconds or 10.0)
    else:
        from evaluation.bench.replay import bench_replay
        from evaluation.sweep import policy_params
        from services.decider.registry import POLICIES

        out = bench_replay(params=policy_params(args.param, list(POLICIES), "benchmarked"))
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0
