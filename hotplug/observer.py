"""Watching a live loop for an audit: what went over the bus, what the event log kept, what the hypervisor did.

The imperative half of ``hotplug.audit``: ``Observer`` records every command and result id and every sample it
sees on the bus (core NATS subscriptions, so it sees what a dashboard would); ``stored_events`` reads the event
log; ``hypervisor_ops`` asks the simulated mini-cloud for its own count of vCPU operations per VM.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats.errors
from nats.aio.client import Client

from hotplug.buswatch import BusWatcher
from hotplug.events import read_events
from shared import subjects
from shared.messages import MetricSample, ScaleCommand, ScaleResult
from shared.sim_api import StatsReply


class Observer(BusWatcher):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()
        self.samples: list[MetricSample] = []
        self.results: list[ScaleResult] = []
        self.commands: list[ScaleCommand] = []
        self.online: dict[str, int] = {}  # the latest online count seen per VM

    def on_sample(self, sample: MetricSample) -> None:
        self.samples.append(sample)
        self.online[sample.vm] = sample.online_vcpus

    def on_command(self, command: ScaleCommand) -> None:
        self.commands.append(command)
        self.seen.add(command.id)

    def on_result(self, result: ScaleResult) -> None:
        self.results.append(result)
        self.seen.add(f"result-{result.command_id}")

    def results_of(self, command_id: str) -> list[ScaleResult]:
        return [r for r in self.results if r.command_id == command_id]


async def stored_events(nc: Client) -> tuple[list[ScaleCommand], list[ScaleResult]]:
    """Every command and result in the event log, oldest first."""
    commands: list[ScaleCommand] = []
    results: list[ScaleResult] = []
    async for _, event in read_events(nc.jetstream()):
        if isinstance(event, ScaleCommand):
            commands.append(event)
        elif isinstance(event, ScaleResult):
            results.append(event)
    return commands, results


async def hypervisor_ops(nc: Client, host: str, timeout_s: float = 5.0) -> dict[str, int]:
    """The simulated hypervisor's count of vCPU operations per VM since it started."""
    reply = await nc.request(subjects.simulator(host, "stats"), b"{}", timeout=timeout_s)
    return {vm.vm: vm.hotplug_ops for vm in msgspec.json.decode(reply.data, type=StatsReply).vms}


async def settle(nc: Client, timeout_s: float = 60.0) -> tuple[list[ScaleCommand], list[ScaleResult]]:
    """Read the event log until every stored command has its result, or ``timeout_s`` passes; returns the
    last reading. Call it once no decider is sending any more."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            commands, results = await stored_events(nc)
        except (nats.errors.Error, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)  # the stream is still electing its leader after a restart
            continue
        if {c.id for c in commands} <= {r.command_id for r in results} or time.monotonic() > deadline:
            return commands, results
        await asyncio.sleep(0.5)
