"""What several command groups share: option types, the service options, and how a service is started."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from shared import bus
from shared.clock import Clock, make_clock
from shared.errors import NotFound, UsageError
from shared.runtime import M, ServiceContext, ServiceOptions, resolve_nats_url, run_service

Handler = Callable[[argparse.Namespace], int]
Subparsers = argparse._SubParsersAction


def add_command(
    sub: Subparsers[argparse.ArgumentParser], name: str, handler: Handler, **kwargs: Any
) -> argparse.ArgumentParser:
    """A subcommand whose parsed arguments ``main`` hands to ``handler``."""
    parser = sub.add_parser(name, **kwargs)
    parser.set_defaults(handler=handler)
    return parser


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def at_least_one(text: str) -> int:
    """A count of things (VMs, guests): a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def simulated_host_options(p: argparse.ArgumentParser) -> None:
    """The simulated host's cores and the jobs that arrive at it (``hotplug simulator``'s, and ``up``'s for the
    simulated cloud, which passes them to its simulator)."""
    p.add_argument(
        "--host-cores",
        type=at_least_one,
        default=None,
        help="the simulated host's physical cores (default: the VMs' maximums together, so they never contend); "
        "its capacity in vCPUs is the config file's [[host]] rule's reading of them",
    )
    p.add_argument(
        "--arrivals-rate",
        type=non_negative,
        default=0.0,
        metavar="JOBS_PER_HOUR",
        help="jobs (VMs to start) arriving per hour, a seeded Poisson process of the mix in "
        "services/simulator/jobs.py (default 0: none)",
    )
    p.add_argument(
        "--arrivals-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="jobs arriving from this CSV: arrival_s,name,requested_vcpus,max_vcpus,profile,lifetime_s,work_s",
    )


def host_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--host``, defaulting to $HOTPLUG_HOST and then ``local``: one default for every command that names a host."""
    parser.add_argument("--host", default=_env("HOST", "local"), help=f"{what} ($HOTPLUG_HOST; local)")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"HOTPLUG_{name}", default)


def service_parent() -> argparse.ArgumentParser:
    """Options every service takes; each defaults to an environment variable (for containers)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--nats", help=f"NATS URL (default: ${bus.DEFAULT_URL_ENV})")
    host_option(p, "hypervisor host name")
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
        type=positive,
        default=float(_env("SPEED", "1")),
        help="simulated seconds per wall second ($HOTPLUG_SPEED)",
    )
    p.add_argument(
        "--epoch",
        type=float,
        default=None,
        help="wall time (POSIX seconds) from which the shared clock runs --speed times faster (default: this "
        "service's start); under --speed every service of a run needs the same one (hotplug up prints its own)",
    )
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    return p


def service_options(args: argparse.Namespace, name: str) -> ServiceOptions:
    url = nats_url(args, name)
    clock: Clock = make_clock(args.speed, args.epoch)
    return ServiceOptions(
        name=name,
        nats_url=url,
        host=args.host,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        clock=clock,
    )


def run(options: ServiceOptions, metrics: M, body: Callable[[ServiceContext[M]], Awaitable[None]]) -> int:
    asyncio.run(run_service(options, body, metrics))
    return 0


def check_trace(path: Path) -> int:
    """Read a ``--trace`` file before anything starts, so a bad one fails at once with one line; its VM count."""
    from services.simulator.cloud import load_trace

    return len(load_trace(path))


def check_arrivals(rate: float, path: Path | None) -> None:
    """Read an ``--arrivals-file`` before anything starts (a bad one fails at once with one line), and refuse a
    rate and a file together."""
    from services.simulator.jobs import load_arrivals

    if path is not None:
        if rate > 0:
            raise UsageError("jobs arrive at --arrivals-rate or from --arrivals-file, not both")
        load_arrivals(path)


def nats_url(args: argparse.Namespace, command: str) -> str:
    """``--nats`` or $HOTPLUG_NATS_URL, which a command that talks to the bus cannot do without."""
    url = resolve_nats_url(args.nats)
    if url is None:
        raise UsageError(f"{command} needs a NATS server: --nats URL or ${bus.DEFAULT_URL_ENV}")
    return url


def live_bus_options(parser: argparse.ArgumentParser) -> None:
    """``--nats`` and ``--data-dir`` for a command that talks to a live loop (load, pause, resume, paused)."""
    parser.add_argument("--nats", default=None, help=f"NATS URL (default: ${bus.DEFAULT_URL_ENV}, or the running up's)")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="without --nats: the broker of the hotplug up using DIR"
    )


def live_bus_url(args: argparse.Namespace) -> str:
    """``--nats``, $HOTPLUG_NATS_URL, or the broker of a ``hotplug up`` running in the data dir."""
    from hotplug.events import live_broker_url

    url = resolve_nats_url(args.nats)
    if url is None:
        url = live_broker_url(args.data_dir or Path(".hotplug"))
    if url is None:
        raise NotFound(f"no NATS server: --nats URL, ${bus.DEFAULT_URL_ENV}, or a running hotplug up in --data-dir")
    return url


def with_stream_access(args: argparse.Namespace, work: Callable[[str], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``work(url)`` against ``--nats``/$HOTPLUG_NATS_URL, or the data dir's broker (live or private)."""
    from hotplug.events import broker_for

    url = resolve_nats_url(args.nats)
    if url is not None and args.data_dir is None:
        return asyncio.run(work(url))
    with broker_for(args.data_dir or Path(".hotplug")) as data_url:
        return asyncio.run(work(data_url))
