"""Sharded deciders: the members of a group share the metrics stream's partitions; each host has one owner.

The metrics stream stores every sample under ``hotplug.metrics.<partition>.<host>.<vm>`` (nats-server's
``partition()`` of the host), so one member sees every VM of a host and plans the host as a whole
(``services.decider.pool``): hosts, not VMs, are what the members share out. Members announce themselves in the
JetStream KV bucket ``hotplug_deciders`` (entries expire unless refreshed), and each takes the partitions that
rendezvous hashing gives it among the live members: adding or losing a member moves only its share. A member
reads its partitions through one durable pull consumer whose filter follows its share. Per-VM decision state is
kept in the KV bucket ``hotplug_decider_state`` (the memory rule's under its own key, ``memory_state_key``), saved
when a VM is decided on and periodically, and a new owner resumes from it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from shared import bus, subjects, topology

log = logging.getLogger(__name__)

MEMBERS_BUCKET = topology.DECIDER_MEMBERS_BUCKET
STATE_BUCKET = topology.DECIDER_STATE_BUCKET
STATE_TTL_S = 7 * 24 * 3600.0  # a state not written for a week describes a VM or a steer long gone
MEMBER_TTL_S = 6.0
HEARTBEAT_S = 1.0


def owner(members: list[str], partition: int) -> str:
    """Rendezvous (highest random weight) hashing: the member that owns ``partition``."""

    def weight(member: str) -> bytes:
        return hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()

    return max(members, key=weight)


def owned_partitions(members: list[str], me: str, partitions: int = subjects.PARTITIONS) -> frozenset[int]:
    if me not in members:
        return frozenset()
    return frozenset(p for p in range(partitions) if owner(members, p) == me)


def state_key(group: str, host: str, vm: str) -> str:
    return f"{group}.{host}.{subjects.vm_token(vm)}"


def memory_state_key(group: str, host: str, vm: str) -> str:
    """The key of a VM's memory decision state: its own, one token longer, so it never meets a vCPU state's."""
    return f"{state_key(group, host, vm)}.memory"


class ShardedIntake:
    """Feeds one member's share of the samples to ``handle(subject, data)``; keeps its share current."""

    def __init__(
        self,
        js: JetStreamContext,
        group: str,
        member: str,
        handle: Callable[[str, bytes], Awaitable[None]],
        on_share: Callable[[frozenset[int]], Awaitable[None]],
    ) -> None:
        self.js = js
        self.group = group
        self.member = member
        self.handle = handle
        self.on_share = on_share
        self.share: frozenset[int] = frozenset()
        self.members: list[str] = []
        self.durable = topology.decider_member_consumer(group, member)
        self._members_kv: KeyValue | None = None
        self._psub: JetStreamContext.PullSubscription | None = None

    async def open_state(self) -> KeyValue:
        return await open_state_bucket(self.js)

    async def run(self) -> None:
        self._members_kv = await bus.key_value(self.js, MEMBERS_BUCKET, ttl_s=MEMBER_TTL_S)
        await self._heartbeat()
        membership = asyncio.ensure_future(self._membership_loop())
        try:
            await self._fetch_loop()
        finally:
            membership.cancel()
            with contextlib.suppress(Exception):
                await self._members_kv.delete(f"{self.group}.{self.member}")

    async def _heartbeat(self) -> None:
        assert self._members_kv is not None
        await self._members_kv.put(f"{self.group}.{self.member}", str(time.time()).encode())
        keys = await bus.current_entries(self.js, self._members_kv, MEMBERS_BUCKET)
        prefix = f"{self.group}."
        members = sorted(k[len(prefix) :] for k in keys if k.startswith(prefix))
        share = owned_partitions(members, self.member)
        self.members = members
        if share != self.share:
            await self._reshard(share)

    async def _membership_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._heartbeat()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("membership of %s/%s not refreshed: %s", self.group, self.member, exc)

    async def _reshard(self, share: frozenset[int]) -> None:
        log.info(
            "%s/%s of %d member(s) now owns partitions %s", self.group, self.member, len(self.members), sorted(share)
        )
        self.share = share
        await self.on_share(share)  # hand over state of the partitions lost before reading new ones
        filters = [subjects.metrics_partition(p) for p in sorted(share)] or [f"{subjects.METRICS}.none.>"]
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.NEW,
            filter_subjects=filters,
            inactive_threshold=60.0,
            max_waiting=512,
        )
        await self.js.add_consumer(topology.METRICS_STREAM, config)
        if self._psub is None:
            self._psub = await self.js.pull_subscribe_bind(durable=self.durable, stream=topology.METRICS_STREAM)

    async def _fetch_loop(self) -> None:
        while True:
            if self._psub is None:
                await asyncio.sleep(0.1)
                continue
            try:
                msgs = await self._psub.fetch(batch=256, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except NotFoundError:
                self._psub = None  # the consumer was removed (e.g. after a long pause): recreate it
                await self._reshard(self.share)
                continue
            for msg in msgs:
                # A batch fetched, or a fetch answered, before a reshard may still hold partitions handed over
                # since: their VMs are another member's now (taking them up again would decide them twice).
                if subjects.stored_partition(msg.subject) in self.share:
                    await self.handle(msg.subject, msg.data)


async def open_state_bucket(js: JetStreamContext) -> KeyValue:
    """The decision state bucket: per-VM states a group hands over, and every decider's harm steers."""
    return await bus.key_value(js, STATE_BUCKET, ttl_s=STATE_TTL_S)


async def load_state(kv: KeyValue, key: str) -> bytes | None:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    return entry.value
