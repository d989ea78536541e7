"""What several command groups share: option types, the service options, and how a service is started."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from shared import bus
from shared.clock import Clock, make_clock
from shared.config.schema import ServiceSettings, Settings
from shared.config.settings import add_flags, specs
from shared.errors import NotFound, UsageError
from shared.plugins import Registry
from shared.runtime import M, ServiceContext, ServiceOptions, resolve_nats_url, run_service
from shared.units import MIB, SizeError, parse_size

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


def at_least_one(text: str) -> int:
    """A count of things (VMs, guests): a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def mebibytes(text: str) -> int:
    """A memory size as people write it (``512MiB``, ``2GiB``; a bare number is MiB), in whole MiB."""
    try:
        size = parse_size(text)
    except SizeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size % MIB:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of MiB")
    return size // MIB


def host_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--host``, defaulting to $HOTPLUG_HOST and then ``local``: one default for every command that names a host."""
    default = ServiceSettings().host
    parser.add_argument("--host", default=_env("HOST", default), help=f"{what} ($HOTPLUG_HOST; {default})")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"HOTPLUG_{name}", default)


def settings_flags(
    parser: argparse.ArgumentParser,
    settings: type[Settings],
    choices: Mapping[str, Callable[[], list[str]]] | None = None,
    plugins: Registry[Any] | None = None,
) -> None:
    """A service's flags, generated from its settings Struct (``shared.config.schema``), each defaulting to "not
    given" (``hotplug.config.apply_file`` sets what it starts from), and the options of ``plugins``."""
    add_flags(parser, specs(settings), choices)
    if plugins is not None:
        plugin_flags(parser, plugins, set(settings.__struct_fields__))


def plugin_flags(parser: argparse.ArgumentParser, plugins: Registry[Any], taken: set[str]) -> None:
    """A flag per option of each plug-in of ``plugins`` that the service does not take itself (plug-ins may
    share an option, as libvirt's source and driver share ``libvirt_uri``)."""
    for name, config_type in plugins.config_types().items():
        new = [s for s in specs(config_type) if s.name not in taken]
        taken |= {s.name for s in new}
        add_flags(
            parser,
            [
                dataclasses.replace(
                    s, description=f"{plugins.kind} {name}: {s.description or s.name} ([plugins.{name}] {s.name})"
                )
                for s in new
            ],
        )


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
