"""Operator commands that stop autoscaling one VM for a while: ``pause``, ``resume`` and ``paused`` (what they do on
the bus is in ``hotplug.pausing``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import nats.errors

from hotplug.cli.common import Subparsers, add_command, host_option, live_bus_options, live_bus_url
from shared.errors import UsageError
from shared.pauses import describe, parse_duration, when

ORDER = 55


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    pause = add_command(
        sub,
        "pause",
        cmd_pause,
        help="stop autoscaling one VM (the decider holds it, the actuator refuses its commands) until resumed or --for",
    )
    pause.add_argument("vm")
    host_option(pause, "the VM's host")
    pause.add_argument(
        "--for",
        dest="duration",
        default=None,
        metavar="DURATION",
        help="how long: 90s, 10m, 2h, 1d (at most 30d); default: until hotplug resume",
    )
    pause.add_argument("--reason", default="", help="why, for the event log and the decider's held reason")
    pause.add_argument(
        "--force", action="store_true", help="pause a VM the metrics stream has no sample of (not running yet)"
    )
    live_bus_options(pause)
    resume = add_command(sub, "resume", cmd_resume, help="let autoscaling move a paused VM again")
    resume.add_argument("vm")
    host_option(resume, "the VM's host")
    live_bus_options(resume)
    paused = add_command(sub, "paused", cmd_paused, help="the VMs paused now: by whom, since and until when, why")
    paused.add_argument("--json", action="store_true", help="one JSON array")
    live_bus_options(paused)


def _refused(command: str, by: str, exc: Exception) -> int:
    print(
        f"hotplug {command}: not done ({exc or type(exc).__name__}): {by} may not write the pause bucket or the "
        "event log here; under hotplug auth only the operator (or admin) user may pause and resume",
        file=sys.stderr,
    )
    return 1


def cmd_pause(args: argparse.Namespace) -> int:
    from hotplug.pausing import pause, who

    try:
        duration_s = None if args.duration is None else parse_duration(args.duration)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    url = live_bus_url(args)
    by = who(url)
    try:
        event, replaced = asyncio.run(
            pause(url, args.host, args.vm, duration_s=duration_s, reason=args.reason, force=args.force, by=by)
        )
    except (nats.errors.Error, TimeoutError) as exc:
        return _refused("pause", by, exc)
    if replaced is not None:
        print(f"{args.host}/{args.vm}: replacing the pause {describe(replaced)}", file=sys.stderr)
    print(f"{args.host}/{args.vm} {describe(event)}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from hotplug.pausing import resume, who

    url = live_bus_url(args)
    by = who(url)
    try:
        lifted = asyncio.run(resume(url, args.host, args.vm, by=by))
    except (nats.errors.Error, TimeoutError) as exc:
        return _refused("resume", by, exc)
    if lifted is None:
        print(f"{args.host}/{args.vm} is not paused", file=sys.stderr)
        return 0
    print(f"{args.host}/{args.vm} resumed (it was {describe(lifted)})")
    return 0


def cmd_paused(args: argparse.Namespace) -> int:
    from hotplug.pausing import listing, record

    pauses = asyncio.run(listing(live_bus_url(args)))
    if args.json:
        print(json.dumps([record(p) for p in pauses], indent=1))
        return 0
    if not pauses:
        print("no VM is paused")
        return 0
    for p in pauses:
        print(f"{p.host}/{p.vm}  {describe(p)}  (since {when(p.time)})")
    return 0
