"""The pause bucket's I/O: storing, lifting and watching pauses (the rules are in ``shared.pauses``).

Services learn pauses from a KV watch, not by asking per command: ``PauseWatch.start`` returns once the bucket's
current entries are known, and a task keeps the book up to date from then on (re-watching after a failure).

The bucket's keys are listed with ``shared.bus.stored_keys``, not with ``KeyValue.keys()``: nats-py's watch (which
``keys()`` is built on) can say "the current entries are all in" before the ones already on their way have been
handed over (nats-io/nats.py#842, open in 2.16), so a watch started beside a paused VM could miss its pause, and a
listing could leave it out. ``PauseWatch`` therefore reads every current entry by key once the watch has started,
and keeps, per key, only the newest revision either way brought.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from shared import bus, topology
from shared.codec import encode
from shared.messages import PauseEvent
from shared.pauses import PAUSE_BUCKET, PauseBook, key, parse_key, ttl_s

log = logging.getLogger(__name__)

_decode = msgspec.json.Decoder(PauseEvent).decode


async def open_bucket(js: JetStreamContext, *, create: bool = True) -> KeyValue:
    """The pause bucket; if missing, created with this deployment's replica count (``create``), else
    BucketNotFoundError. It is looked up first: a viewer may read the bucket but not create it."""
    try:
        return await js.key_value(PAUSE_BUCKET)
    except BucketNotFoundError:
        if not create:
            raise
    return await bus.key_value(js, PAUSE_BUCKET)


async def store(js: JetStreamContext, pause: PauseEvent, now: float) -> None:
    """Store a pause as its VM's entry (replacing any: last writer wins); the broker drops it after its end."""
    subject = topology.kv_subject(PAUSE_BUCKET, key(pause.host, pause.vm))
    await js.publish(subject, encode(pause), msg_ttl=ttl_s(pause, now))


async def lift(kv: KeyValue, host: str, vm: str) -> None:
    """Delete the VM's entry: resumed, or cleaned up after its end."""
    await kv.delete(key(host, vm))


async def entry(kv: KeyValue, host: str, vm: str) -> PauseEvent | None:
    """The VM's stored pause, expired or not; None when it has none."""
    try:
        found = await kv.get(key(host, vm))
    except KeyNotFoundError:
        return None
    return _decode(found.value) if found.value else None


async def entries(js: JetStreamContext, kv: KeyValue) -> list[PauseEvent]:
    """Every stored pause, expired or not (an undecodable entry is skipped, and logged)."""
    out = []
    for name, value in (await bus.current_entries(js, kv, PAUSE_BUCKET)).items():
        try:
            out.append(_decode(value))
        except msgspec.DecodeError as exc:
            log.warning("pause entry %s not understood: %s", name, exc)
    return out


class PauseWatch:
    """A service's view of the pause bucket: a ``PauseBook`` kept current by a KV watch.

    ``on_change(host, vm, pause)`` is called for every change after the first load (``pause`` None: lifted)."""

    def __init__(
        self,
        js: JetStreamContext,
        keys: str = ">",
        on_change: Callable[[str, str, PauseEvent | None], None] | None = None,
    ) -> None:
        self.js = js
        self.keys = keys
        self.book = PauseBook()
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()
        self._revisions: dict[str, int] = {}  # per key, the newest revision the book holds

    async def start(self, patience_s: float | None = None) -> bool:
        """Begin watching; return once the current entries are known (True), or after ``patience_s`` (False:
        the watch keeps trying in the background)."""
        self._task = asyncio.ensure_future(self._follow())
        try:
            await asyncio.wait_for(self._loaded.wait(), timeout=patience_s)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        while True:
            try:
                kv = await open_bucket(self.js)
                watcher = await kv.watch(self.keys)
                try:
                    await self._consume(kv, watcher)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pause bucket not watched (%s); retrying", exc or type(exc).__name__)
            await asyncio.sleep(1.0)

    async def _consume(self, kv: KeyValue, watcher: KeyValue.KeyWatcher) -> None:
        async for update in watcher:
            if update is None:  # the watch's "all in" (see the module's docstring: it may come early)
                if not self._loaded.is_set():
                    await self._read_current(kv)
                    self._loaded.set()
                continue
            self._apply(update.key, update.revision, update.operation, update.value)

    async def _read_current(self, kv: KeyValue) -> None:
        """Every current entry, read by key: what the watch may not have handed over yet."""
        for name in await bus.stored_keys(self.js, PAUSE_BUCKET, self.keys):
            try:
                found = await kv.get(name)
            except KeyNotFoundError as exc:  # deleted: its marker's revision, where nats-py gives it
                marker = getattr(exc, "entry", None)
                self._apply(name, getattr(marker, "revision", None) or 0, KV_DEL, None)
                continue
            self._apply(name, found.revision or 0, found.operation, found.value)

    def _apply(self, name: str, revision: int | None, operation: str | None, value: bytes | None) -> None:
        """One entry into the book, unless the book already holds a newer revision of its key."""
        if revision and revision <= self._revisions.get(name, 0):
            return  # the book holds this revision or a newer one
        try:
            host, vm = parse_key(name)
        except ValueError:
            return
        pause: PauseEvent | None = None
        if operation not in (KV_DEL, KV_PURGE) and value:
            try:
                pause = _decode(value)
            except msgspec.DecodeError as exc:
                log.warning("pause entry %s not understood: %s", name, exc)
                return
        if revision:
            self._revisions[name] = revision
        if pause is None:
            self.book.remove(host, vm)
        else:
            self.book.put(pause)
        if self._loaded.is_set() and self.on_change is not None:
            self.on_change(host, vm, pause)
