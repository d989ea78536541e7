"""``hotplug pause``, ``resume`` and ``paused``: an operator stops autoscaling of one VM for a while, and lets it go.

A pause is the VM's entry in the pause bucket (``shared.pauses``), and both pause and resume are events in the event
log (``hotplug events`` shows them). Under ``hotplug auth`` only the operator (and admin) user may pause and resume;
a viewer may list. Who paused is the NATS user under auth, else the OS user.

The argument parsers are here as well as the commands, so ``hotplug/cli.py`` only registers them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from shared import bus, pause_bucket, subjects
from shared.codec import encode
from shared.messages import PauseAction, PauseEvent
from shared.pauses import active, describe, parse_duration, split_expired, when
from shared.runtime import resolve_nats_url


class PauseUsageError(ValueError):
    """Bad input to a pause command: one line and exit 2 (``hotplug.cli.main`` prints it)."""


def _default_host() -> str:
    return os.environ.get("HOTPLUG_HOST", "local")


def add_parsers(sub: Any) -> None:
    """The ``pause``, ``resume`` and ``paused`` sub-commands."""

    def connection(p: argparse.ArgumentParser) -> None:
        p.add_argument("--nats", default=None, help=f"NATS URL (default: ${bus.DEFAULT_URL_ENV}, or the running up's)")
        p.add_argument(
            "--data-dir", type=Path, default=None, help="without --nats: the broker of the hotplug up using DIR"
        )

    pause = sub.add_parser(
        "pause",
        help="stop autoscaling one VM (the decider holds it, the actuator refuses its commands) until resumed or --for",
    )
    pause.add_argument("vm")
    pause.add_argument("--host", default=_default_host(), help="the VM's host ($HOTPLUG_HOST; local)")
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
    connection(pause)
    resume = sub.add_parser("resume", help="let autoscaling move a paused VM again")
    resume.add_argument("vm")
    resume.add_argument("--host", default=_default_host(), help="the VM's host ($HOTPLUG_HOST; local)")
    connection(resume)
    paused = sub.add_parser("paused", help="the VMs paused now: by whom, since and until when, why")
    paused.add_argument("--json", action="store_true", help="one JSON array")
    connection(paused)


def _url(args: argparse.Namespace) -> str:
    from hotplug.events import live_broker_url

    url = resolve_nats_url(args.nats)
    if url is None:
        url = live_broker_url(args.data_dir or Path(".hotplug"))
    if url is None:
        raise PauseUsageError(
            f"no NATS server: --nats URL, ${bus.DEFAULT_URL_ENV}, or a running hotplug up in --data-dir"
        )
    return url


def who(url: str) -> str:
    """The NATS user the URL carries (under ``hotplug auth``), else the OS user."""
    _, user, _ = bus.credentials_apart(url)
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def record(pause: PauseEvent) -> dict[str, Any]:
    """The JSON form of a pause, for ``paused --json``."""
    return {
        "host": pause.host,
        "vm": pause.vm,
        "by": pause.by,
        "since": pause.time,
        "until": pause.until,
        "reason": pause.reason,
        "id": pause.id,
    }


def _checked(event: PauseEvent) -> PauseEvent:
    """The event, validated as a receiver will (VM name, host name, user name, reason length)."""
    try:
        return msgspec.json.decode(encode(event), type=PauseEvent)
    except msgspec.ValidationError as exc:
        raise PauseUsageError(f"not a valid pause: {exc}") from None


async def _session(url: str, name: str) -> Client:
    try:
        return await bus.connect(url, name, forever=False)
    except Exception as exc:
        raise PauseUsageError(f"cannot reach NATS at {bus.servers(url)}: {exc or type(exc).__name__}") from None


async def _known_vm(js: JetStreamContext, host: str, vm: str) -> bool:
    """Whether the metrics stream holds a sample of the VM (it keeps a day of them)."""
    stored = f"{subjects.METRICS}.{subjects.partition_of(host, vm)}.{host}.{subjects.vm_token(vm)}"
    try:
        info = await js.stream_info(subjects.METRICS_STREAM, subjects_filter=stored)
    except NotFoundError:
        return False
    return bool(info.state.subjects)


async def _events_stored(js: JetStreamContext) -> None:
    """The event log must store pause events before anything is paused: a pause nobody can find later is worse."""
    await bus.ensure_streams(js)
    info = await js.stream_info(subjects.EVENTS_STREAM)
    if subjects.ALL_PAUSES not in (info.config.subjects or []):
        raise PauseUsageError(
            f"the event log ({subjects.EVENTS_STREAM}) does not keep pause events yet: run hotplug streams once "
            "(as the admin user under hotplug auth) to bring it up to date"
        )


async def _log(js: JetStreamContext, event: PauseEvent) -> None:
    await bus.publish_durable(js, subjects.pauses(event.host, event.vm), encode(event), msg_id=event.id, patience_s=20)


async def _clean_up(kv: KeyValue, now: float) -> None:
    """Delete the entries of pauses that are over (best effort: the broker drops them a minute later anyway)."""
    with contextlib.suppress(Exception):
        _, expired = split_expired(await pause_bucket.entries(kv), now)
        for pause in expired:
            await pause_bucket.lift(kv, pause.host, pause.vm)


async def pause(
    url: str, host: str, vm: str, *, duration_s: float | None, reason: str, force: bool, by: str
) -> tuple[PauseEvent, PauseEvent | None]:
    """Pause the VM; returns the pause and the one in force it replaced (last writer wins), if any."""
    now = time.time()
    event = _checked(
        PauseEvent(
            id=f"pause-{secrets.token_hex(8)}",
            time=now,
            host=host,
            vm=vm,
            action=PauseAction.PAUSE,
            by=by,
            reason=reason,
            until=None if duration_s is None else now + duration_s,
        )
    )
    nc = await _session(url, "hotplug-pause")
    try:
        js = nc.jetstream()
        if not force and not await _known_vm(js, host, vm):
            raise PauseUsageError(
                f"no VM {vm!r} on host {host!r}: the metrics stream has no sample of it (check the name and "
                "--host; --force pauses it all the same)"
            )
        await _events_stored(js)
        kv = await pause_bucket.open_bucket(js)
        before = await pause_bucket.entry(kv, host, vm)
        await pause_bucket.store(js, event, now)
        await _log(js, event)
        await _clean_up(kv, now)
    finally:
        await nc.close()
    return event, before if before is not None and active(before, now) else None


async def resume(url: str, host: str, vm: str, *, by: str) -> PauseEvent | None:
    """Lift the VM's pause; returns the pause lifted, or None when it had none in force."""
    now = time.time()
    nc = await _session(url, "hotplug-resume")
    try:
        js = nc.jetstream()
        kv = await pause_bucket.open_bucket(js)
        before = await pause_bucket.entry(kv, host, vm)
        if before is None or not active(before, now):
            await _clean_up(kv, now)
            return None
        await _events_stored(js)
        event = _checked(
            PauseEvent(
                id=f"resume-{secrets.token_hex(8)}",
                time=now,
                host=host,
                vm=vm,
                action=PauseAction.RESUME,
                by=by,
                until=before.until,
            )
        )
        await pause_bucket.lift(kv, host, vm)
        await _log(js, event)
        await _clean_up(kv, now)
    finally:
        await nc.close()
    return before


async def listing(url: str) -> list[PauseEvent]:
    """The pauses in force now, by host and VM."""
    nc = await _session(url, "hotplug-paused")
    try:
        try:
            kv = await pause_bucket.open_bucket(nc.jetstream(), create=False)
        except BucketNotFoundError:
            return []  # nothing was ever paused here
        live, _ = split_expired(await pause_bucket.entries(kv), time.time())
    finally:
        await nc.close()
    return live


def _refused(command: str, by: str, exc: Exception) -> int:
    print(
        f"hotplug {command}: not done ({exc or type(exc).__name__}): {by} may not write the pause bucket or the "
        "event log here; under hotplug auth only the operator (or admin) user may pause and resume",
        file=sys.stderr,
    )
    return 1


def cmd_pause(args: argparse.Namespace) -> int:
    duration_s = None if args.duration is None else parse_duration(args.duration)
    url = _url(args)
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
    url = _url(args)
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
    pauses = asyncio.run(listing(_url(args)))
    if args.json:
        print(json.dumps([record(p) for p in pauses], indent=1))
        return 0
    if not pauses:
        print("no VM is paused")
        return 0
    for p in pauses:
        print(f"{p.host}/{p.vm}  {describe(p)}  (since {when(p.time)})")
    return 0


COMMANDS = {"pause": cmd_pause, "resume": cmd_resume, "paused": cmd_paused}
