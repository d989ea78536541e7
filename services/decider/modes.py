"""The decider's run modes, each a small object chosen once at start (the outlet in ``Decider.__init__``,
``leadership_for``).

How an order leaves (an ``Outlet``): as a command stored in the event log (``Commands``), as a line in the log
(``DryRun``), or as a proposal for every sample, holding included (``Shadow``); a VM whose rule says ``recommend``
has its orders logged, never commanded (``Recommend``). Who may command: any decider (``Unled``), or only the
replica holding a lease, whose commands name the lease and its term (``Leased``). Which VMs a decider sees (all of
them, or its group's share) is the intake's business (service.py). Every ``ScaleCommand`` is built by
``Orders.make``; a memory order (a ``Decision`` whose resource is memory) goes out the same ways, as a memory
command, except as a proposal (shadows score vCPU allocations only).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Protocol

import msgspec
from nats.js import JetStreamContext

from services.decider.engine import Decision
from services.decider.lease import LEASE_BUCKET, Lease
from shared import bus
from shared.messages import MetricSample, Resource, ScaleCommand, short_text
from shared.units import format_size

log = logging.getLogger(__name__)


class Orders:
    """Builds every order this decider gives, with an id unique across restarts (the event log de-duplicates by
    id) and fixed across retries."""

    def __init__(self, decider: str) -> None:
        self.decider = decider
        self._prefix = f"{decider}-{secrets.token_hex(4)}"
        self._seq = 0

    def make(
        self,
        sample: MetricSample,
        target: int,
        reason: str,
        now: float,
        expires_at: float,
        resource: Resource = Resource.VCPU,
    ) -> ScaleCommand:
        """The order for ``target`` (vCPUs, or bytes of memory) on ``sample``'s VM, on the size the sample saw."""
        self._seq += 1
        memory = resource is Resource.MEMORY
        seen_memory = sample.memory.size_bytes if sample.memory is not None else 0
        return ScaleCommand(
            id=f"{self._prefix}-{self._seq}",
            time=now,
            host=sample.host,
            vm=sample.vm,
            resource=resource,
            decider=self.decider,
            reason=short_text(reason),
            expires_at=expires_at,
            sample_time=sample.time,
            target_vcpus=None if memory else target,
            seen_vcpus=None if memory else sample.online_vcpus,
            target_memory_bytes=target if memory else None,
            seen_memory_bytes=seen_memory if memory else None,
        )


class Sent(Protocol):
    """An engine told of the order it decided, once that order went out (the vCPU or the memory engine)."""

    def mark_sent(self, target: int, until: float, command_id: str = "", time: float | None = None) -> None: ...


def change(sample: MetricSample, decision: Decision) -> str:
    """``2 -> 4`` or ``memory 4GiB -> 6GiB``, for the log."""
    if decision.resource is Resource.MEMORY:
        size = sample.memory.size_bytes if sample.memory is not None else 0
        return f"memory {format_size(size)} -> {format_size(decision.target)}"
    return f"{sample.online_vcpus} -> {decision.target}"


class Leadership(Protocol):
    @property
    def active(self) -> bool:
        """Whether this replica may command now."""
        ...

    @property
    def term(self) -> int: ...

    async def start(self, js: JetStreamContext, tasks: set[asyncio.Task[None]]) -> None:
        """Take part in the election (if any) before the first sample."""
        ...

    def stamp(self, command: ScaleCommand) -> ScaleCommand:
        """The command as this replica sends it."""
        ...


class Unled:
    """No lease: this decider commands its VMs alone."""

    active = True
    term = 0

    async def start(self, js: JetStreamContext, tasks: set[asyncio.Task[None]]) -> None:
        pass

    def stamp(self, command: ScaleCommand) -> ScaleCommand:
        return command


class Leased:
    """Replicas with the same lease elect one active decider (lease.py); a standby keeps its state warm and
    commands nothing. Commands name the lease and its term, so the actuator can refuse a deposed leader's."""

    def __init__(self, name: str, me: str, ttl_s: float) -> None:
        self.name = name
        self.me = me
        self.ttl_s = ttl_s
        self.lease: Lease | None = None  # once started

    @property
    def active(self) -> bool:
        return self.lease is not None and self.lease.active

    @property
    def term(self) -> int:
        return self.lease.term if self.lease else 0

    async def start(self, js: JetStreamContext, tasks: set[asyncio.Task[None]]) -> None:
        kv = await bus.key_value(js, LEASE_BUCKET)
        self.lease = Lease(kv, self.name, self.me, self.ttl_s)
        await self.lease.tick()
        tasks.add(asyncio.ensure_future(self.lease.run()))

    def stamp(self, command: ScaleCommand) -> ScaleCommand:
        return msgspec.structs.replace(command, decider=self.name, term=self.term)


def leadership_for(lease: str | None, me: str, ttl_s: float) -> Leadership:
    return Leased(lease, me, ttl_s) if lease else Unled()


class Outlet(Protocol):
    # The decisions metric's ``mode`` label.
    mode: str
    # Whether it writes to the event log (so the streams must exist).
    stores: bool

    def emit(self, sample: MetricSample, engine: Sent, decision: Decision | None, now: float) -> ScaleCommand | None:
        """Send what the engine decided on ``sample``; the command given, if any."""
        ...


class Commands:
    """Orders become commands, stored in the event log for the actuator of their host."""

    mode = "command"
    stores = True

    def __init__(
        self,
        orders: Orders,
        leadership: Leadership,
        ttl_s: float,
        publish: Callable[[ScaleCommand], None],
    ) -> None:
        self.orders = orders
        self.leadership = leadership
        self.ttl_s = ttl_s
        self.publish = publish

    def emit(self, sample: MetricSample, engine: Sent, decision: Decision | None, now: float) -> ScaleCommand | None:
        if decision is None:
            return None
        command = self.orders.make(sample, decision.target, decision.reason, now, now + self.ttl_s, decision.resource)
        if not self.leadership.active:
            return None  # a standby keeps its state warm and commands nothing
        command = self.leadership.stamp(command)
        engine.mark_sent(decision.target, command.expires_at, command.id, now)
        log.info(
            "resize %s/%s %s: %s [%s]", sample.host, sample.vm, change(sample, decision), decision.reason, command.id
        )
        self.publish(command)
        return command


class DryRun:
    """Orders are logged, never sent."""

    mode = "dry-run"
    stores = False

    def __init__(self, orders: Orders, ttl_s: float) -> None:
        self.orders = orders
        self.ttl_s = ttl_s

    def emit(self, sample: MetricSample, engine: Sent, decision: Decision | None, now: float) -> ScaleCommand | None:
        if decision is None:
            return None
        log.info(
            "dry run: would resize %s/%s %s: %s", sample.host, sample.vm, change(sample, decision), decision.reason
        )
        return self.orders.make(sample, decision.target, decision.reason, now, now + self.ttl_s, decision.resource)


class Recommend:
    """For a VM whose ``[[vm]]`` rule says ``recommend``: orders are decided and logged, never sent. Under a dry
    run or a shadow, which send no command anyway, theirs is the way."""

    stores = False

    def __init__(self, inner: Outlet) -> None:
        self.inner = inner
        self.mode = "recommend" if inner.mode == "command" else inner.mode

    def emit(self, sample: MetricSample, engine: Sent, decision: Decision | None, now: float) -> ScaleCommand | None:
        if self.inner.mode != "command":
            return self.inner.emit(sample, engine, decision, now)
        if decision is not None:
            log.info(
                "recommend: would resize %s/%s %s: %s",
                sample.host,
                sample.vm,
                change(sample, decision),
                decision.reason,
            )
        return None


class Shadow:
    """A recommendation for every sample (holding included), published as a proposal and never commanded, so the
    decider can be scored like a replay (shadow.py)."""

    mode = "shadow"
    stores = True

    def __init__(self, orders: Orders, propose: Callable[[ScaleCommand], None]) -> None:
        self.orders = orders
        self.propose = propose

    def emit(self, sample: MetricSample, engine: Sent, decision: Decision | None, now: float) -> ScaleCommand | None:
        target = sample.online_vcpus if decision is None else decision.target
        reason = decision.reason if decision else "hold"
        self.propose(self.orders.make(sample, max(1, target), reason, now, now))
        return None
