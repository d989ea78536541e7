"""Faults to inject into a live loop: orders sent behind the decider's back, floods of made-up samples, bodies
no service should accept. Used by ``hotplug chaos`` and the fault tests; killing a process is in
``hotplug.harness.processes`` (``sigkill``)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable

from nats.aio.client import Client

from shared import bus, subjects
from shared.codec import encode
from shared.messages import MetricSample, ScaleCommand

_ids = itertools.count(1)

# Bodies no service may accept, each for its own reason: not JSON, over the size limit, a future schema.
GARBAGE = b"not json at all"
OVERSIZED = b"{" * 100_000


def order(
    host: str,
    vm: str,
    target: int,
    seen: int,
    *,
    now: float | None = None,
    ttl_s: float = 60.0,
    expires_at: float | None = None,
    decider: str = "test",
    reason: str = "test",
    term: int = 0,
    prefix: str = "t",
) -> ScaleCommand:
    """An order as a decider would send it, with an id unique to this process (``<prefix>-<pid>-<n>``)."""
    at = time.time() if now is None else now
    return ScaleCommand(
        id=f"{prefix}-{os.getpid()}-{next(_ids)}",
        time=at,
        host=host,
        vm=vm,
        target_vcpus=target,
        seen_vcpus=seen,
        decider=decider,
        reason=reason,
        expires_at=at + ttl_s if expires_at is None else expires_at,
        term=term,
    )


async def store(nc: Client, command: ScaleCommand, *, retry_id: bool = False) -> bool:
    """Store ``command`` in the event log as a decider would. ``retry_id``: with its id as Nats-Msg-Id, as a
    retry of a publish is sent (the stream keeps one copy); without, a repeat is stored again, as a duplicate
    would be. Whether the stream called it a duplicate."""
    subject = subjects.commands(command.host, command.vm)
    if retry_id:
        ack = await nc.jetstream().publish(subject, encode(command), headers={"Nats-Msg-Id": command.id})
    else:
        ack = await nc.jetstream().publish(subject, encode(command))
    return bool(ack.duplicate)


async def store_durably(nc: Client, command: ScaleCommand) -> None:
    """Store ``command`` the way the decider service does (retried until stored, its id as Nats-Msg-Id)."""
    await bus.publish_durable(
        nc.jetstream(), subjects.commands(command.host, command.vm), encode(command), msg_id=command.id
    )


def sample(host: str, vm: str, now: float, *, source: str, online: int = 2, used: float = 1.0) -> MetricSample:
    """A sample of a VM of 1 to 4 vCPUs, ``online`` of them online and ``used`` cores busy."""
    return MetricSample(
        time=now,
        host=host,
        vm=vm,
        online_vcpus=online,
        min_vcpus=1,
        max_vcpus=4,
        cpu_used_cores=used,
        interval_s=1.0,
        source=source,
    )


def future_version(message: MetricSample) -> bytes:
    """``message`` as a later schema version (99) would encode it."""
    return encode(message).replace(b'"v":1,', b'"v":99,', 1)


def ghosts(count: int) -> list[str]:
    """Names of VMs no host has."""
    return [f"ghost-{i:04d}" for i in range(count)]


async def flood(
    nc: Client, host: str, vms: list[str], rounds: int, *, source: str, now: Callable[[], float] = time.time
) -> int:
    """A runaway agent: ``rounds`` samples of each of ``vms``, as fast as the broker takes them (flushed each
    round), stamped by ``now`` (a service clock's, or the wall clock). How many were published."""
    published = 0
    for _ in range(rounds):
        at = now()
        for vm in vms:
            await nc.publish(subjects.metrics(host, vm), encode(sample(host, vm, at, source=source)))
            published += 1
        await nc.flush()
    return published
