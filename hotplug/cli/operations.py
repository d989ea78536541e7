"""Operator commands: ``auth`` (users and credentials), ``streams`` (create them), ``load`` (pin a simulated
VM's demand) and ``schema`` (the messages' JSON Schema)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import msgspec

from hotplug.cli.common import Subparsers, add_command, host_option, live_bus_options, live_bus_url, nats_url
from shared import bus, topology
from shared.errors import NotFound, UsageError
from shared.messages import json_schemas

ORDER = 50


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    sch = add_command(
        sub,
        "schema",
        cmd_schema,
        help="write the JSON Schema of every message, each field described (for deciders in any language: "
        "docs/deciders-any-language.md)",
    )
    sch.add_argument("--out", type=Path, default=None, help="directory (default: print one JSON document)")

    auth = sub.add_parser("auth", help="broker security: users, permissions, credentials")
    asub = auth.add_subparsers(dest="auth_command", required=True)
    ainit = add_command(
        asub, "init", cmd_auth, help="write nats.conf (one user per service) and credentials/<user>.env"
    )
    ainit.add_argument("--out", type=Path, required=True)
    ainit.add_argument("--hosts", default="local", help="comma-separated hypervisor hosts")
    ainit.add_argument("--address", default="127.0.0.1", help="the broker's address in the client URLs")
    ainit.add_argument("--port", default="4222", help="the broker's client port; a cluster's, comma-separated")
    ainit.add_argument("--tls", action="store_true", help="also make a CA and a server certificate (openssl)")
    ainit.add_argument(
        "--actuator-names",
        default=topology.ACTUATOR_NAME,
        help=f"comma-separated --name of the hosts' actuators ({topology.ACTUATOR_NAME})",
    )

    streams = add_command(
        sub, "streams", cmd_streams, help="create the streams, or bring them up to date (as the admin user)"
    )
    streams.add_argument("--nats", default=None)

    load = add_command(
        sub, "load", cmd_load, help="pin a simulated VM's demand (cores), or 'clear' to restore its workload"
    )
    load.add_argument("vm")
    load.add_argument("cores")
    live_bus_options(load)
    host_option(load, "the simulated VM's host")


def cmd_schema(args: argparse.Namespace) -> int:
    schemas = json_schemas()
    if args.out is None:
        print(json.dumps(schemas, indent=2))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas.items():
        path = args.out / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2) + "\n")
        print(path)
    return 0


def cmd_auth(args: argparse.Namespace) -> int:
    from hotplug.auth import write

    hosts = [h for h in args.hosts.split(",") if h]
    try:
        ports = [int(p) for p in args.port.split(",") if p]
    except ValueError:
        raise UsageError(f"--port takes port numbers, comma-separated, not {args.port!r}") from None
    try:
        paths = write(args.out, hosts, args.address, ports, args.tls, args.actuator_names.split(","))
    except FileNotFoundError as exc:  # --tls without openssl
        raise NotFound(str(exc)) from exc
    for path in paths:
        print(path)
    print(
        f"start the broker with -c {args.out / 'nats.conf'}; create the streams once as admin:\n"
        f"  env $(cat {args.out / 'credentials' / 'admin.env'}) hotplug streams\n"
        f"then start each service with its own credentials, e.g. "
        f"env $(cat {args.out / 'credentials' / 'decider.env'}) hotplug decider",
        file=sys.stderr,
    )
    return 0


def cmd_streams(args: argparse.Namespace) -> int:
    url = nats_url(args, "streams")

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

    url = live_bus_url(args)
    try:
        cores = None if args.cores == "clear" else float(args.cores)
        # The request's own type says which demands are valid (NaN and infinities are not: JSON has no such number).
        load = msgspec.convert({"vm": args.vm, "demand_cores": cores}, LoadRequest)
    except (ValueError, msgspec.ValidationError):
        raise UsageError(f"cores takes a number from 0 to 4096 or 'clear', not {args.cores!r}") from None

    async def send() -> LoadReply:
        nc = await bus.connect(url, "hotplug-load", forever=False)
        try:
            request = msgspec.json.encode(load)
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
