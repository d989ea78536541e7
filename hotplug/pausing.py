"""What ``hotplug pause``, ``resume`` and ``paused`` do on the bus (their options are in ``hotplug.cli.pausing``).

A pause is the VM's entry in the pause bucket (``shared.pauses``), and both pause and resume are events in the event
log (``hotplug events`` shows them). Under ``hotplug auth`` only the operator (and admin) user may pause and resume;
a viewer may list. Who paused is the NATS user under auth, else the OS user.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import time
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from shared import bus, pause_bucket, subjects, topology
from shared.codec import encode
from shared.errors import NotFound, UsageError, UserError
from shared.messages import PauseAction, PauseEvent
from shared.pauses import active, split_expired


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
        raise UsageError(f"not a valid pause: {exc}") from None


async def _known_vm(js: JetStreamContext, host: str, vm: str) -> bool:
    """Whether the metrics stream holds a sample of the VM (it keeps a day of them)."""
    try:
        info = await js.stream_info(topology.METRICS_STREAM, subjects_filter=subjects.stored_metrics(host, vm))
    except NotFoundError:
        return False
    return bool(info.state.subjects)


async def _events_stored(js: JetStreamContext) -> None:
    """The event log must store pause events before anything is paused: a pause nobody can find later is worse."""
    await bus.ensure_streams(js)
    info = await js.stream_info(topology.EVENTS_STREAM)
    if subjects.ALL_PAUSES not in (info.config.subjects or []):
        raise UserError(
            f"the event log ({topology.EVENTS_STREAM}) does not keep pause events yet: run hotplug streams once "
            "(as the admin user under hotplug auth) to bring it up to date"
        )


async def _log(js: JetStreamContext, event: PauseEvent) -> None:
    await bus.publish_durable(js, subjects.pauses(event.host, event.vm), encode(event), msg_id=event.id, patience_s=20)


async def _clean_up(js: JetStreamContext, kv: KeyValue, now: float) -> None:
    """Delete the entries of pauses that are over (best effort: the broker drops them a minute later anyway)."""
    with contextlib.suppress(Exception):
        _, expired = split_expired(await pause_bucket.entries(js, kv), now)
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
    nc = await bus.session(url, "hotplug-pause")
    try:
        js = nc.jetstream()
        if not force and not await _known_vm(js, host, vm):
            raise NotFound(
                f"no VM {vm!r} on host {host!r}: the metrics stream has no sample of it (check the name and "
                "--host; --force pauses it all the same)"
            )
        await _events_stored(js)
        kv = await pause_bucket.open_bucket(js)
        before = await pause_bucket.entry(kv, host, vm)
        await pause_bucket.store(js, event, now)
        await _log(js, event)
        await _clean_up(js, kv, now)
    finally:
        await nc.close()
    return event, before if before is not None and active(before, now) else None


async def resume(url: str, host: str, vm: str, *, by: str) -> PauseEvent | None:
    """Lift the VM's pause; returns the pause lifted, or None when it had none in force."""
    now = time.time()
    nc = await bus.session(url, "hotplug-resume")
    try:
        js = nc.jetstream()
        kv = await pause_bucket.open_bucket(js)
        before = await pause_bucket.entry(kv, host, vm)
        if before is None or not active(before, now):
            await _clean_up(js, kv, now)
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
        await _clean_up(js, kv, now)
    finally:
        await nc.close()
    return before


async def listing(url: str) -> list[PauseEvent]:
    """The pauses in force now, by host and VM."""
    nc = await bus.session(url, "hotplug-paused")
    try:
        try:
            kv = await pause_bucket.open_bucket(nc.jetstream(), create=False)
        except BucketNotFoundError:
            return []  # nothing was ever paused here
        live, _ = split_expired(await pause_bucket.entries(nc.jetstream(), kv), time.time())
    finally:
        await nc.close()
    return live
