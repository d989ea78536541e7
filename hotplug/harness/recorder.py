"""Recording the bus: every metric sample, command, proposal, result and host state, decoded, as a dashboard would see
them (core NATS subscriptions); and what the event log and the simulated hypervisor kept, for an audit.

``BusWatcher`` is the base (subclasses say what to do with each message: ``hotplug up`` feeds its live view);
``Recorder`` keeps everything, for ``hotplug chaos``, the benchmarks and the tests. Messages that do not decode
are counted and skipped: the services count and log them themselves.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from hotplug.harness.poll import within
from shared import eventlog, subjects
from shared.codec import BadMessage, Decoder
from shared.messages import HostState, MetricSample, ScaleCommand, ScaleResult
from shared.sim_api import SimHost, SimMemory, StatsReply


class BusWatcher:
    """Decodes what it subscribed to; subclasses say what to do with each message."""

    def __init__(self) -> None:
        self._sample = Decoder(MetricSample)
        self._command = Decoder(ScaleCommand)
        self._result = Decoder(ScaleResult)
        self._host = Decoder(HostState)
        self.undecodable = 0

    async def attach(
        self,
        nc: Client,
        *,
        samples: bool = True,
        commands: bool = True,
        results: bool = True,
        proposals: bool = False,
        hosts: bool = False,
        metrics_subject: str = subjects.ALL_METRICS,
    ) -> None:
        """Subscribe to the kinds asked for (``metrics_subject``: one VM's samples, say) and wait until the
        server has the subscriptions, so nothing published after this returns is missed."""
        if samples:
            await nc.subscribe(metrics_subject, cb=self._on_sample)
        if commands:
            await nc.subscribe(subjects.ALL_COMMANDS, cb=self._on_command)
        if results:
            await nc.subscribe(subjects.ALL_RESULTS, cb=self._on_result)
        if proposals:
            await nc.subscribe(subjects.ALL_PROPOSALS, cb=self._on_proposal)
        if hosts:
            await nc.subscribe(subjects.ALL_HOSTS, cb=self._on_host_state)
        await nc.flush()

    def on_sample(self, sample: MetricSample) -> None:
        pass

    def on_command(self, command: ScaleCommand) -> None:
        pass

    def on_proposal(self, proposal: ScaleCommand) -> None:
        pass

    def on_result(self, result: ScaleResult) -> None:
        pass

    def on_host_state(self, state: HostState) -> None:
        pass

    async def _on_sample(self, msg: Msg) -> None:
        try:
            self.on_sample(self._sample.decode(msg.data))
        except BadMessage:
            self.undecodable += 1

    async def _on_command(self, msg: Msg) -> None:
        try:
            self.on_command(self._command.decode(msg.data))
        except BadMessage:
            self.undecodable += 1

    async def _on_proposal(self, msg: Msg) -> None:
        try:
            self.on_proposal(self._command.decode(msg.data))
        except BadMessage:
            self.undecodable += 1

    async def _on_result(self, msg: Msg) -> None:
        try:
            self.on_result(self._result.decode(msg.data))
        except BadMessage:
            self.undecodable += 1

    async def _on_host_state(self, msg: Msg) -> None:
        try:
            self.on_host_state(self._host.decode(msg.data))
        except BadMessage:
            self.undecodable += 1


class Recorder(BusWatcher):
    """Everything seen, in arrival order: samples, commands (with their arrival time), proposals, results, the
    ids seen (a result's as ``result-<command id>``) and each VM's latest online count."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()
        self.samples: list[MetricSample] = []
        self.results: list[ScaleResult] = []
        self.commands: list[ScaleCommand] = []
        self.command_arrivals: list[float] = []  # time.monotonic() of each command's arrival
        self.proposals: list[ScaleCommand] = []
        self.online: dict[str, int] = {}  # the latest online count seen per VM

    def on_sample(self, sample: MetricSample) -> None:
        self.samples.append(sample)
        self.online[sample.vm] = sample.online_vcpus

    def on_command(self, command: ScaleCommand) -> None:
        self.commands.append(command)
        self.command_arrivals.append(time.monotonic())
        self.seen.add(command.id)

    def on_proposal(self, proposal: ScaleCommand) -> None:
        self.proposals.append(proposal)

    def on_result(self, result: ScaleResult) -> None:
        self.results.append(result)
        self.seen.add(f"result-{result.command_id}")

    def results_of(self, command_id: str) -> list[ScaleResult]:
        return [r for r in self.results if r.command_id == command_id]

    async def result_of(self, command_id: str, timeout_s: float = 30.0) -> ScaleResult | None:
        """The first result of ``command_id``, waiting up to ``timeout_s``; None if none came."""
        if await within(timeout_s, lambda: self.results_of(command_id)):
            return self.results_of(command_id)[0]
        return None


async def stored_events(nc: Client) -> tuple[list[ScaleCommand], list[ScaleResult]]:
    """Every command and result in the event log, oldest first."""
    return await eventlog.stored_events(nc.jetstream())


async def _stats(nc: Client, host: str, timeout_s: float) -> StatsReply:
    reply = await nc.request(subjects.simulator(host, "stats"), b"{}", timeout=timeout_s)
    return msgspec.json.decode(reply.data, type=StatsReply)


async def hypervisor_ops(nc: Client, host: str, timeout_s: float = 5.0) -> dict[str, int]:
    """The simulated hypervisor's count of vCPU operations per VM since it started."""
    return {vm.vm: vm.hotplug_ops for vm in (await _stats(nc, host, timeout_s)).vms}


async def hypervisor_online(nc: Client, host: str, timeout_s: float = 5.0) -> dict[str, int]:
    """The simulated hypervisor's online vCPUs per running VM, now."""
    return {vm.vm: vm.online_vcpus for vm in (await _stats(nc, host, timeout_s)).vms}


async def hypervisor_memory(
    nc: Client, host: str, timeout_s: float = 5.0
) -> tuple[SimHost | None, dict[str, SimMemory]]:
    """The simulated host now (its committed memory among its figures) and each running VM's memory."""
    stats = await _stats(nc, host, timeout_s)
    return stats.host, {vm.vm: vm.memory for vm in stats.vms if vm.memory is not None}


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
