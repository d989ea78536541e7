"""Leadership for decider replicas: one active per lease, held in the JetStream KV bucket ``hotplug_leases``.

The holder renews its lease every third of its time to live; when it stops (crash, partition, pause), another
replica takes the lease over once it has expired, in a new term. Every write is a compare-and-set on the
entry's revision, so two replicas cannot both win. Commands carry the term, and the actuator refuses those
from a term older than the latest it knows (a deposed leader's late orders). Expiry is judged on wall
clocks, so replicas need synchronised clocks (NTP), within a small part of the time to live.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.leadership import LEASE_BUCKET, LeaseState

__all__ = ["LEASE_BUCKET", "Lease", "LeaseState", "next_lease"]

log = logging.getLogger(__name__)


def next_lease(current: LeaseState | None, me: str, now: float, ttl_s: float) -> LeaseState | None:
    """The lease to write now, or None to leave it (someone else holds a live one)."""
    if current is None:
        return LeaseState(me, 1, now + ttl_s)
    if current.holder == me:
        return LeaseState(me, current.term, now + ttl_s)
    if current.expires_at <= now:
        return LeaseState(me, current.term + 1, now + ttl_s)
    return None


class Lease:
    def __init__(self, kv: KeyValue, name: str, me: str, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.name = name
        self.me = me
        self.ttl_s = ttl_s
        self.clock = clock
        self.term = 0
        self._held_until = 0.0

    @property
    def active(self) -> bool:
        """Leader now: holds the lease and it has not run out (even if a renewal is late)."""
        return self._held_until > self.clock()

    async def tick(self) -> None:
        now = self.clock()
        try:
            entry = await self.kv.get(self.name)
            current, revision = msgspec.json.decode(entry.value or b"", type=LeaseState), entry.revision
        except KeyNotFoundError:
            current, revision = None, None
        wanted = next_lease(current, self.me, now, self.ttl_s)
        if wanted is None:
            assert current is not None
            self.term, self._held_until = current.term, 0.0
            return
        try:
            if revision is None:
                await self.kv.create(self.name, msgspec.json.encode(wanted))
            else:
                await self.kv.update(self.name, msgspec.json.encode(wanted), last=revision)
        except KeyWrongLastSequenceError:
            self._held_until = 0.0  # another replica wrote first
            return
        if not self.active or wanted.term != self.term:
            log.info("%s leads %s in term %d", self.me, self.name, wanted.term)
        self.term, self._held_until = wanted.term, now + self.ttl_s

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # the broker may be away: the lease then simply runs out
                log.warning("lease %s not renewed: %s", self.name, exc)
            await asyncio.sleep(self.ttl_s / 3)
