"""``hotplug pool``: each host's capacity, committed, free and used vCPUs, the jobs waiting to start, and the grows
deferred now with their age and reason (what it does on the bus is in ``hotplug.pool``, its report in
``hotplug.pool_report``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from hotplug.cli.common import Subparsers, add_command, live_bus_options, live_bus_url, positive

ORDER = 57  # after pause, resume and paused


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    pool = add_command(
        sub,
        "pool",
        cmd_pool,
        help="each host's capacity, committed and free vCPUs, waiting jobs, and the grows deferred now",
    )
    pool.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="HOST",
        help="only this host (repeatable); default: every host in the metrics stream or with a grow deferred",
    )
    pool.add_argument(
        "--wait",
        type=positive,
        default=2.5,
        metavar="SECONDS",
        help="wait at most this long for each host's HostState (collectors publish every interval: about two "
        "intervals; default 2.5)",
    )
    pool.add_argument("--json", action="store_true", help="one JSON document")
    live_bus_options(pool)


def cmd_pool(args: argparse.Namespace) -> int:
    from hotplug.pool import gather
    from hotplug.pool_report import pool_report, render_text

    states, deferrals, expected, waited = asyncio.run(gather(live_bus_url(args), hosts=args.host, wait_s=args.wait))
    report = pool_report(states, deferrals, expected=expected, wait_s=args.wait, waited_s=waited, now=time.time())
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        sys.stdout.write(render_text(report))
    if not states:
        print(f"hotplug pool: no HostState within {args.wait:g} s", file=sys.stderr)
        return 1
    return 0
