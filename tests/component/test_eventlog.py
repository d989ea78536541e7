"""shared.eventlog against a real nats-server: every reader of a run (events, report, compare, the actuator's
look-ups, chaos) sees the same stored messages, in order, and treats one that does not decode the same way."""

from __future__ import annotations

import time

from nats.aio.client import Client

from hotplug.harness.faults import order, sample, store
from shared import eventlog, subjects
from shared.codec import encode
from shared.messages import ScaleResult


def _result(command_id: str, vm: str, now: float) -> ScaleResult:
    return ScaleResult(
        command_id=command_id,
        time=now,
        host="h1",
        vm=vm,
        ok=True,
        vcpus_before=1,
        vcpus_after=2,
        target_vcpus=2,
        duration_s=0.1,
        actuator="actuator",
    )


async def test_every_reader_sees_the_same_log(nc: Client) -> None:
    js, now = nc.jetstream(), time.time()
    first, second = order("h1", "vm-01", 2, 1, now=now), order("h1", "vm-02", 2, 1, now=now)
    for command in (first, second):
        await store(nc, command)
    await js.publish(subjects.results("h1", "vm-01"), encode(_result(first.id, "vm-01", now)))
    await js.publish(subjects.results("h1", "vm-01"), b"{not json")
    await js.publish(subjects.results("h1", "vm-02"), encode(_result(second.id, "vm-02", now + 1)))
    await js.publish(subjects.metrics("h1", "vm-01"), encode(sample("h1", "vm-01", now, source="test")))
    proposal = order("h1", "vm-01", 3, 2, now=now)
    await js.publish(subjects.proposals("shadow", "h1", "vm-01"), encode(proposal))

    events = [(s, e) async for s, e in eventlog.read_events(js)]
    assert [type(e).__name__ if e else None for _, e in events] == [
        "ScaleCommand",
        "ScaleCommand",
        "ScaleResult",
        None,  # handed over as undecodable, for `hotplug events` to say so
        "ScaleResult",
    ]
    assert events[3][0] == subjects.results("h1", "vm-01")

    commands, results = await eventlog.stored_events(js)
    assert [c.id for c in commands] == [first.id, second.id]
    assert [r.command_id for r in results] == [first.id, second.id]

    looked_up = [r.command_id async for r in eventlog.read_results(js, f"{subjects.RESULTS}.h1.>")]
    assert looked_up == [first.id, second.id]  # the bad one left out

    newest = await eventlog.last_result(js, "h1", "vm-02")
    assert newest is not None and newest.command_id == second.id
    assert await eventlog.last_result(js, "h1", "vm-01") is None  # its newest does not decode

    samples, proposals = await eventlog.read_metrics(js)
    assert [s.vm for s in samples] == ["vm-01"] and proposals == []
    samples, proposals = await eventlog.read_metrics(js, proposals=True)
    assert [s.vm for s in samples] == ["vm-01"] and [p.id for p in proposals] == [proposal.id]

    run = await eventlog.read_run(js)
    assert (len(run[0]), [c.id for c in run[1]], [r.command_id for r in run[2]]) == (
        1,
        [first.id, second.id],
        [first.id, second.id],
    )
