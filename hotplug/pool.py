"""What ``hotplug pool`` does on the bus (its options are in ``hotplug.cli.pool``, its report in
``hotplug.pool_report``): listen for one HostState per host, and read each VM's newest Deferral from the event log.

The hosts it waits for are those named, else those in the metrics stream (a day of samples) and those with a grow
deferred now; it stops as soon as each has reported, or when the wait is over (collectors publish every interval,
so about two intervals suffice). Under ``hotplug auth`` the viewer and operator users may do all of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from hotplug.harness.poll import within
from hotplug.pool_report import deferred_now
from shared import bus, subjects, topology
from shared.codec import BadMessage, Decoder
from shared.eventlog import read_deferrals
from shared.messages import Deferral, HostState

_state_decoder = Decoder(HostState)


async def metrics_hosts(js: JetStreamContext) -> set[str]:
    """The hosts the metrics stream holds samples of (it keeps a day of them)."""
    try:
        info = await js.stream_info(topology.METRICS_STREAM, subjects_filter=subjects.ALL_METRICS)
    except NotFoundError:
        return set()
    found = set()
    for subject in info.state.subjects or {}:
        try:
            found.add(subjects.split(subject)[1])
        except ValueError:
            continue  # a proposal or another shape: not a sample's
    return found


class HostStates:
    """The newest HostState of each host heard on ``hotplug.hosts.*``; one whose body names another host than its
    subject, or that does not decode, is ignored (the services drop them too)."""

    def __init__(self, hosts: Sequence[str] = ()) -> None:
        self.only = set(hosts)
        self.states: dict[str, HostState] = {}

    async def on_message(self, msg: Msg) -> None:
        try:
            state = _state_decoder.decode(msg.data)
        except BadMessage:
            return
        said = subjects.origin(msg.subject)
        if said is None or said[0] != state.host or (self.only and state.host not in self.only):
            return
        seen = self.states.get(state.host)
        if seen is None or state.time >= seen.time:
            self.states[state.host] = state


async def gather(
    url: str, *, hosts: Sequence[str] = (), wait_s: float
) -> tuple[dict[str, HostState], list[Deferral], set[str], float]:
    """The HostStates heard (newest per host), the newest Deferral of each VM (of ``hosts``, if named), the hosts
    waited for, and how long it waited."""
    nc = await bus.session(url, "hotplug-pool")
    try:
        heard = HostStates(hosts)
        await nc.subscribe(subjects.ALL_HOSTS, cb=heard.on_message)
        await nc.flush()
        started = time.monotonic()
        js = nc.jetstream()
        deferrals = [d for d in await read_deferrals(js, latest=True) if not hosts or d.host in hosts]
        expected = set(hosts) or await metrics_hosts(js) | {d.host for d in deferred_now(deferrals)}
        remaining = max(0.0, wait_s - (time.monotonic() - started))
        if expected:
            await within(remaining, lambda: expected <= set(heard.states), interval_s=0.05)
        else:
            await asyncio.sleep(remaining)  # no host known: listen for whoever reports within the wait
        waited = time.monotonic() - started
    finally:
        await nc.close()
    return dict(heard.states), deferrals, expected, waited
