"""The actuator service: durable command intake, one command at a time per VM, exactly one result each.

A thin shell around the command ledger (ledger.py), which holds every rule and their order; the shell only carries
out what it says (ARCHITECTURE.md): at start-up, each step before any command is taken (``_start_up``); for each
delivery, what to do with it (``_dispatch``); and each VM's worker asks the ledger for its next action, carries it
out (the event log, the pause book, the driver, the progress markers, acknowledgements) and hands back what it
found. Commands come from a durable JetStream consumer
(explicit ack), so a restarted actuator resumes where it stopped. A command is acknowledged only after its result
is stored. Every command gets exactly one result, across restarts too: the ids answered in the last
``ANSWERED_KEEP_S`` are kept in memory (answered.py) and read back from the event log at startup; a copy of a
command older than that is looked up in the log before it is judged. A copy of an answered command is
acknowledged without acting or answering again. A command interrupted by a crash in the middle of its hot-plug
steps is settled by the next actuator before anything else (progress.py): its result reports the change that
did happen (unless the event log has its result already: the actuator had stored it when it died).

A VM an operator paused (``hotplug pause``) is refused with ``paused`` whatever the decider knows: the actuator
watches its host's keys of the pause bucket and takes no command before it knows the pauses in force.

The actuator keeps its host within its capacity (the ``[[host]]`` rules, ``shared.pool``), whichever decider sent the
grow: before each grow it reads its driver's view of the host and grants the vCPUs that fit (reservations.py), all,
part (``host-full`` with the size reached) or none; a shrink always passes. Memory grows likewise, within the host's
memory capacity, where the driver reports the host's memory. It also reads the view every
``host_refresh_s`` for its metrics. A driver that reports no host (an older plug-in) leaves the host unarbitrated.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError, NotFoundError
from prometheus_client import Counter, Gauge, Histogram

from services.actuator import steps
from services.actuator.checks import Bounds, Refusal
from services.actuator.drivers.base import Driver, DriverError, HostAware, host_aware
from services.actuator.ledger import (
    ANSWERED_KEEP_S,
    Acknowledge,
    Acknowledged,
    Action,
    Done,
    Execute,
    Executed,
    Failed,
    FindLeftOver,
    Found,
    HostRead,
    Ignore,
    Ledger,
    LedgerRules,
    LeftOver,
    LookUp,
    Mark,
    Marked,
    MemoryRead,
    Open,
    Opened,
    Outcome,
    PauseRead,
    ReadHost,
    ReadPause,
    ReadVm,
    Recall,
    Recalled,
    Recounted,
    Reread,
    Settle,
    Settled,
    StartAction,
    StartOutcome,
    StartWorker,
    Store,
    Stored,
    TakeCommands,
    Terminate,
    Unmark,
    Unmarked,
    VmRead,
    Watching,
    WatchPauses,
)
from services.actuator.memory_checks import MemoryPlan
from services.actuator.progress import ProgressLog
from services.actuator.vmbounds import bounds_for
from shared import bus, subjects, topology
from shared.codec import encode
from shared.config.schema import ActuatorSettings, HostRule, VmRule
from shared.errors import UsageError
from shared.eventlog import read_results
from shared.inbox import Inbox
from shared.leadership import LEASE_BUCKET, LeaseState
from shared.messages import ErrorCode, PauseEvent, Resource, ScaleCommand, ScaleResult
from shared.pause_bucket import PauseWatch
from shared.pauses import describe, host_keys
from shared.pool import HostCapacity, MemoryCapacity, host_capacity, memory_capacity
from shared.runtime import ServiceContext
from shared.telemetry import ServiceMetrics
from shared.units import format_size

log = logging.getLogger(__name__)

T = TypeVar("T")


_SETTINGS = ActuatorSettings()  # the defaults, declared once with the flags' and the file's settings


@dataclass(frozen=True)
class ActuatorConfig:
    name: str = _SETTINGS.name
    bounds: Bounds = field(default_factory=Bounds)
    vm_bounds: dict[str, Bounds] = field(default_factory=dict)
    step_timeout_s: float = _SETTINGS.step_timeout
    ack_wait_s: float = _SETTINGS.ack_wait
    # At most this many resizes of one VM per window (clock seconds), whatever the deciders say.
    max_changes: int = _SETTINGS.max_changes
    rate_window_s: float = _SETTINGS.rate_window
    # After a restart: how long the VM of an interrupted command must stay unchanged before its count is taken
    # as final (a step the dead actuator asked for may still be under way in the hypervisor).
    settle_s: float = 5.0
    # How often the host view is read for the metrics (wall seconds); every grow reads it afresh anyway.
    host_refresh_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_changes < 1:
            raise UsageError("max_changes must be at least 1")


class ActuatorMetrics(ServiceMetrics):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.actions = Counter(
            "hotplug_actuator_actions",
            "Commands executed, by outcome and error code",
            ["outcome", "error_code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "hotplug_actuator_duration_seconds",
            "Wall time to execute one command",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.end_to_end = Histogram(
            "hotplug_actuator_end_to_end_seconds",
            "From the triggering sample to the applied change (clock seconds)",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.in_flight = Gauge("hotplug_actuator_in_flight", "Commands being executed now", registry=self.registry)
        self.hotplug_calls = Counter(
            "hotplug_actuator_hotplug_calls",
            "Driver operations by kind: plug and unplug (one vCPU each), memory-grow and memory-shrink (one request "
            "each)",
            ["op"],
            registry=self.registry,
        )
        # Every series exists from the start (at 0), so dashboards and alerts never query a missing one.
        self.actions.labels("ok", "")
        for code in ErrorCode:
            self.actions.labels("error", code.value)
        for op in ("plug", "unplug", "memory-grow", "memory-shrink"):
            self.hotplug_calls.labels(op)
        self.paused = Gauge(
            "hotplug_actuator_paused_vms",
            "VMs of this actuator's host paused by an operator now (hotplug pause)",
            registry=self.registry,
        )
        # NaN while the host is unknown (no view yet, or a driver that reports none).
        self.host_capacity = Gauge(
            "hotplug_actuator_host_capacity_vcpus",
            "vCPUs this actuator's host may commit ([[host]] rules over the driver's CPUs)",
            registry=self.registry,
        )
        self.host_committed = Gauge(
            "hotplug_actuator_host_committed_vcpus",
            "vCPUs committed on this actuator's host: every running VM's online vCPUs, or the size granted to a "
            "grow under way",
            registry=self.registry,
        )
        self.host_capacity_memory = Gauge(
            "hotplug_actuator_host_capacity_memory_bytes",
            "memory this actuator's host may commit ([[host]] rules over the driver's; NaN: not reported)",
            registry=self.registry,
        )
        self.host_committed_memory = Gauge(
            "hotplug_actuator_host_committed_memory_bytes",
            "memory committed on this actuator's host: every running VM's, or the size granted to a grow under way",
            registry=self.registry,
        )


class Actuator:
    def __init__(
        self,
        ctx: ServiceContext[ActuatorMetrics],
        driver: Driver,
        config: ActuatorConfig,
        rules: tuple[VmRule, ...] = (),
        host_rules: tuple[HostRule, ...] = (),
    ) -> None:
        self.ctx = ctx
        self.driver = driver
        self.config = config
        # The config file's [[vm]] rules, for each VM's bounds, and its [[host]] rules, for the host's capacity;
        # replaced whole on a reload (SIGHUP), and in force from the next host view.
        self.rules = rules
        self.host_rules = host_rules
        self.host_driver: HostAware | None = host_aware(driver)
        self._capacity: HostCapacity | None = None
        self._memory: MemoryCapacity | None = None
        self.metrics = ctx.metrics
        self.commands: Inbox[ScaleCommand] = Inbox("command", ScaleCommand, ctx.metrics)
        self.ledger: Ledger[Msg] = Ledger(
            LedgerRules(
                actuator=config.name,
                host=ctx.host,
                bounds=self.bounds_for,
                max_changes=config.max_changes,
                rate_window_s=config.rate_window_s,
                host_views=self.host_driver is not None,
            )
        )
        self.metrics.in_flight.set_function(self.ledger.in_flight)
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._log_reads = asyncio.Lock()  # one reader of the event log at a time: it has one permitted name
        self.progress: ProgressLog
        # Pauses of this host's VMs, from the pause bucket's watch; wall-clock times, as operators give them.
        self.pauses = PauseWatch(ctx.js, host_keys(ctx.host), on_change=self._on_pause_change)
        self.metrics.paused.set_function(lambda: self.pauses.book.count(time.time()))
        room = self.ledger.host
        self.metrics.host_capacity.set_function(lambda: math.nan if room.capacity is None else room.capacity)
        self.metrics.host_committed.set_function(lambda: room.committed() if room.known else math.nan)
        memory = self.ledger.host_memory
        self.metrics.host_capacity_memory.set_function(lambda: math.nan if memory.capacity is None else memory.capacity)
        self.metrics.host_committed_memory.set_function(lambda: memory.committed() if memory.known else math.nan)

    def bounds_for(self, vm: str) -> Bounds:
        """The sizes the actuator allows ``vm``: --vm-bounds, else its [[vm]] rule's, else its own (vmbounds.py)."""
        return bounds_for(self.ctx.host, vm, self.config.bounds, self.rules, self.config.vm_bounds)

    @property
    def durable(self) -> str:
        return topology.actuator_consumer(self.config.name, self.ctx.host)

    async def run(self) -> None:
        await self._start_up()
        start = dt.datetime.fromtimestamp(time.time() - 300, tz=dt.UTC)
        consumer = ConsumerConfig(
            durable_name=self.durable,
            ack_wait=self.config.ack_wait_s,
            max_ack_pending=10_000,
            # A new consumer starts a little in the past, so commands sent while it was being created are
            # not missed; old ones it meets end in an "expired" result.
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=start.isoformat(),  # type: ignore[arg-type]
        )
        psub = await self._subscribe(consumer)
        log.info("actuator %s on host %s with driver %s", self.config.name, self.ctx.host, self.driver.name)
        if self.host_driver is None:
            log.warning("driver %s reports no host view: grows are not held to the host's capacity", self.driver.name)
        terms = asyncio.ensure_future(self._follow_terms())
        refresh = asyncio.ensure_future(self._refresh_host())
        try:
            while True:
                try:
                    msgs = await psub.fetch(batch=64, timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except NotFoundError:
                    log.warning("the command consumer %s is gone; making it again", self.durable)
                    psub = await self._subscribe(consumer)
                    continue
                except nats.errors.Error as exc:
                    # The broker is restarting or electing a leader: unacknowledged commands wait for us there.
                    log.warning("command intake paused: %s", exc or type(exc).__name__)
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    try:
                        await self._dispatch(msg)
                    except nats.errors.Error as exc:
                        log.warning(
                            "command at stream sequence %s not taken (%s); it will be redelivered",
                            msg.metadata.sequence.stream,
                            exc or type(exc).__name__,
                        )
        finally:
            terms.cancel()
            refresh.cancel()
            await self.pauses.stop()
            for worker in self._workers.values():
                worker.cancel()
            await self.driver.close()

    async def _subscribe(self, consumer: ConsumerConfig) -> JetStreamContext.PullSubscription:
        """The durable pull subscription, retried while JetStream is not yet available."""
        while True:
            try:
                return await self.ctx.js.pull_subscribe(
                    subjects.host_commands(self.ctx.host),
                    durable=self.durable,
                    stream=topology.EVENTS_STREAM,
                    config=consumer,
                )
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("command consumer not ready (%s); retrying", exc or type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _follow_terms(self) -> None:
        """Learn each lease's current term, so a deposed leader's late orders are refused even before the new
        leader has sent any."""
        decode = msgspec.json.Decoder(LeaseState).decode
        said: set[str] = set()  # what is wrong, as last said: each trouble is logged when it starts, not every second
        while True:
            troubles: set[str] = set()
            try:
                kv = await self.ctx.js.key_value(LEASE_BUCKET)
                for name, value in (await bus.current_entries(self.ctx.js, kv, LEASE_BUCKET)).items():
                    try:
                        self.ledger.learn_term(name, decode(value).term)
                    except msgspec.DecodeError as exc:
                        troubles.add(f"lease {name!r} not understood: {exc}")
            except BucketNotFoundError:
                pass  # no leases in use
            except Exception as exc:  # a broker fault, or a permission the credentials lack: tried again each second
                troubles.add(f"lease terms not read: {exc or type(exc).__name__}")
            for trouble in sorted(troubles - said):
                log.warning("%s (a deposed leader's late orders are refused only once its successor's arrive)", trouble)
            said = troubles
            await asyncio.sleep(1.0)

    async def _dispatch(self, msg: Msg) -> None:
        """Do what the ledger says with one delivery (its order is the ledger's: ``Ledger.receive``)."""
        intake = self.ledger.receive(self.commands.open(msg.subject, msg.data), msg)
        if isinstance(intake, Terminate):
            await intake.handle.term()
        elif isinstance(intake, Ignore):
            self._ignore_duplicate(intake.command, intake.why)
            for handle in intake.handles:
                await handle.ack()
        elif isinstance(intake, StartWorker):
            self._workers[intake.vm] = asyncio.ensure_future(self._work(intake.vm))

    async def _look(self) -> None:
        """Read the driver's host view now and take it, with the capacity the [[host]] rules give its CPUs."""
        assert self.host_driver is not None
        ticket = self.ledger.host.ticket()
        memory_ticket = self.ledger.host_memory.ticket()
        view = await self._call(self.host_driver.host_view())
        capacity = host_capacity(self.host_rules, self.ctx.host, view.cpus)
        # A driver that reports no memory of its own leaves the host's memory unarbitrated, even under a rule that
        # names its size: what its VMs hold would be unknown.
        memory = (
            None if view.memory_bytes is None else memory_capacity(self.host_rules, self.ctx.host, view.memory_bytes)
        )
        if (
            self.ledger.host_memory.observe(view, None if memory is None else memory.capacity_bytes, memory_ticket)
            and memory != self._memory
        ):
            self._memory = memory
            if memory is not None:
                log.info(
                    "host %s: memory capacity %s (%s, %s reserved, overcommit %g), %s committed",
                    self.ctx.host,
                    format_size(memory.capacity_bytes),
                    format_size(memory.memory_bytes),
                    format_size(memory.reserve_bytes),
                    memory.overcommit,
                    format_size(self.ledger.host_memory.committed()),
                )
        if self.ledger.host.observe(view, capacity.capacity_vcpus, ticket) and capacity != self._capacity:
            self._capacity = capacity
            rule = "no [[host]] rule" if capacity.rule_index is None else f"[[host]] rule {capacity.rule_index + 1}"
            log.info(
                "host %s: capacity %d vCPUs (%d CPUs, %g reserved, overcommit %g; %s), %d committed by %d VMs",
                self.ctx.host,
                capacity.capacity_vcpus,
                capacity.cpus,
                capacity.reserve_cpus,
                capacity.overcommit,
                rule,
                self.ledger.host.committed(),
                len(view.vms),
            )

    async def _refresh_host(self) -> None:
        """Keep the host view fresh for the metrics; grows read their own."""
        if self.host_driver is None:
            return
        failing = False
        while True:
            try:
                await self._look()
                failing = False
            except DriverError as exc:
                if not failing:  # once per spell, not every few seconds
                    log.warning("host view of %s not read: %s: %s", self.ctx.host, exc.code, exc.message)
                failing = True
            except Exception:
                log.exception("host view of %s not read", self.ctx.host)
            await asyncio.sleep(self.config.host_refresh_s)

    def _on_pause_change(self, host: str, vm: str, pause: PauseEvent | None) -> None:
        log.info("%s/%s %s", host, vm, "resumed" if pause is None else describe(pause))

    def _ignore_duplicate(self, command: ScaleCommand, why: str) -> None:
        self.metrics.dropped.labels(self.metrics.service, "command", "duplicate").inc()
        log.warning("duplicate command %s for %s ignored: %s", command.id, command.vm, why)

    async def _work(self, vm: str) -> None:
        """Run one VM's commands: carry out what the ledger says next, hand it what that found, until it says
        ``Done`` (a later command starts another worker)."""
        try:
            while not isinstance(action := self.ledger.next_action(vm, self.ctx.clock.now()), Done):
                outcome = await self._carry_out(action)
                self.ledger.outcome(vm, outcome, self.ctx.clock.now(), time.perf_counter())
        except asyncio.CancelledError:
            self.ledger.abandon(vm)
            raise
        except Exception:
            log.exception("actuator worker for %s failed; unacknowledged commands will be redelivered", vm)
            self.ledger.abandon(vm)
        finally:
            self._workers.pop(vm, None)

    async def _carry_out(self, action: Action[Msg]) -> Outcome[Msg]:
        """Do one thing the ledger said, and say what it found; a driver's error is an outcome, any other raises."""
        if isinstance(action, LookUp):
            return Found(await self._in_log(action.command, action.since))
        if isinstance(action, ReadPause):
            # At its turn: a pause that ended while the command waited no longer stands.
            wall = time.time()
            return PauseRead(self.pauses.book.paused(action.command.host, action.command.vm, wall), wall)
        if isinstance(action, Store | Unmark):
            return await self._keep(action)
        if isinstance(action, Acknowledge):
            if action.duplicate is not None:
                self._ignore_duplicate(action.command, action.duplicate)
            for msg in action.handles:
                await msg.ack()
            return Acknowledged(action.handles)
        if isinstance(action, Mark):
            await self.progress.begin(action.command, action.before)
            return Marked()
        if isinstance(action, Reread):
            try:
                return Recounted(await self._size(action.command))
            except DriverError:
                return Recounted(None)
        try:
            if isinstance(action, ReadVm):
                if action.command.resource is Resource.MEMORY:
                    resizer = steps.resizer_of(self.driver)
                    return MemoryRead(await self._call(resizer.read_memory(action.command.vm)))
                return VmRead(await self._call(self.driver.read(action.command.vm)))
            if isinstance(action, ReadHost):
                await self._look()
                return HostRead()
            assert isinstance(action, Execute), action
            decided = action.plan
            if isinstance(decided, MemoryPlan):
                after = await steps.move_memory(
                    self.driver,
                    action.command.vm,
                    decided,
                    action.before,
                    timeout_s=self.config.step_timeout_s,
                    keepalive=action.handle.in_progress,
                )
                self.metrics.hotplug_calls.labels(decided.op).inc()
                return Executed(after)
            after = await steps.take_steps(
                self.driver,
                action.command.vm,
                decided,
                action.before,
                timeout_s=self.config.step_timeout_s,
                # a slow hypervisor must not make the command look abandoned
                before_step=action.handle.in_progress,
                after_step=self.metrics.hotplug_calls.labels(decided.op).inc,
            )
            return Executed(after)
        except DriverError as exc:
            return Failed(Refusal(exc.code, exc.message))

    async def _results_in_log(self, filter_subject: str, since_clock_time: float) -> AsyncGenerator[ScaleResult, None]:
        """This host's stored results on ``filter_subject`` from about ``since_clock_time`` on."""
        since = dt.datetime.fromtimestamp(self.ctx.clock.wall_time(since_clock_time), tz=dt.UTC)
        stored = read_results(self.ctx.js, filter_subject, since=since, name=topology.actuator_log_reader(self.durable))
        async with self._log_reads, contextlib.aclosing(stored):
            async for result in stored:
                yield result

    async def _start_up(self) -> None:
        """Carry out what the ledger says to do before any command is taken, in its order, until it says to take
        commands (``Ledger.start_action``)."""
        while not isinstance(action := self.ledger.start_action(self.ctx.clock.now()), TakeCommands):
            outcome = await self._carry_out_start(action)
            self.ledger.started(outcome, self.ctx.clock.now(), time.perf_counter())

    async def _carry_out_start(self, action: StartAction) -> StartOutcome:
        if isinstance(action, Open):
            await bus.ensure_streams(self.ctx.js)
            self.progress = await ProgressLog.open(self.ctx.js, self.ctx.host)
            return Opened()
        if isinstance(action, Recall):
            results = await self._recall(action.since)
            log.info("%d commands answered in the last %.0f s", len(results), ANSWERED_KEEP_S)
            return Recalled(results)
        if isinstance(action, FindLeftOver):
            return LeftOver(tuple((marker.command, marker.before) for marker in await self.progress.left_over()))
        if isinstance(action, LookUp):
            return Found(await self._in_log(action.command, action.since))
        if isinstance(action, Settle):
            try:
                return Settled(*await self._wait_for_quiet(action.command))
            except DriverError as exc:
                command = action.command
                log.warning("%s left in progress on %s, not settled: %s", command.id, command.vm, exc.message)
                return Failed(Refusal(exc.code, exc.message))
        if isinstance(action, Store | Unmark):
            return await self._keep(action)
        assert isinstance(action, WatchPauses), action
        await self.pauses.start()
        return Watching()

    async def _keep(self, action: Store | Unmark) -> Stored | Unmarked:
        """What a command's and the start-up's orders share: a result stored, or a progress marker removed."""
        if isinstance(action, Store):
            await self._store(action.result)
            return Stored(action.result)
        await self.progress.end(action.command)
        return Unmarked()

    async def _recall(self, since: float) -> tuple[ScaleResult, ...]:
        """The results stored from clock time ``since`` on, read again from the start while the broker fails."""
        while True:
            try:
                return tuple([r async for r in self._results_in_log(subjects.host_results(self.ctx.host), since)])
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("answered commands not read back yet (%s); retrying", exc or type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _in_log(self, command: ScaleCommand, since: float) -> bool:
        """Whether the event log holds a result of ``command`` (too old for the memory of answered ids)."""
        results = self._results_in_log(subjects.results(command.host, command.vm), since)
        async with contextlib.aclosing(results):  # leaving early must free the reader (and its lock) at once
            async for result in results:
                if result.command_id == command.id:
                    return True
        return False

    async def _size(self, command: ScaleCommand) -> int:
        """The VM's size now in the unit of the command's resource: online vCPUs, or memory in bytes."""
        return (await self._size_and_step(command))[0]

    async def _size_and_step(self, command: ScaleCommand) -> tuple[int, int]:
        """The VM's size now, and how near a target counts as there: memory in bytes and its step, in one read; or
        online vCPUs and 1."""
        if command.resource is Resource.MEMORY:
            view = await self._call(steps.resizer_of(self.driver).read_memory(command.vm))
            return view.size_bytes, max(1, view.step_bytes)
        return (await self._call(self.driver.read(command.vm))).online_vcpus, 1

    async def _wait_for_quiet(self, command: ScaleCommand) -> tuple[int, int]:
        """The VM's size once it reaches the command's target, or has not moved for ``settle_s``: a step the
        dead actuator had asked for may still be under way in the hypervisor. With the step that counts as there."""
        target = command.memory_change()[1] if command.resource is Resource.MEMORY else command.vcpu_change()[1]
        now, step = await self._size_and_step(command)
        quiet_since = time.monotonic()
        while abs(now - target) >= step and time.monotonic() - quiet_since < self.config.settle_s:
            await asyncio.sleep(0.2)
            latest = await self._size(command)
            if latest != now:
                now, quiet_since = latest, time.monotonic()
        return now, step

    async def _store(self, result: ScaleResult) -> None:
        """Store a result in the event log (the ledger learns it is answered from the outcome)."""
        await bus.publish_durable(
            self.ctx.js, subjects.results(result.host, result.vm), encode(result), msg_id=f"result-{result.command_id}"
        )
        self._record(result)

    def _record(self, result: ScaleResult) -> None:
        outcome = "ok" if result.ok else "error"
        self.metrics.actions.labels(outcome, result.error_code.value if result.error_code else "").inc()
        self.metrics.duration.observe(result.duration_s)
        if result.ok and result.sample_time is not None and result.vcpus_before != result.vcpus_after:
            self.metrics.end_to_end.observe(max(0.0, result.time - result.sample_time))
        log.info(
            "%s %s/%s %s%s",
            result.command_id,
            result.host,
            result.vm,
            _change(result),
            "" if result.ok else f" failed: {result.error_code}: {result.error}",
        )

    async def _call(self, awaitable: Awaitable[T]) -> T:
        return await steps.call(self.driver, awaitable, self.config.step_timeout_s)


def _change(result: ScaleResult) -> str:
    """``2 -> 4`` (vCPUs) or ``4GiB -> 6GiB`` (memory), for the log."""
    if result.resource is Resource.MEMORY:
        before, after = result.memory_before_bytes, result.memory_after_bytes
        return f"{_size(before)} -> {_size(after)}"
    return f"{result.vcpus_before} -> {result.vcpus_after}"


def _size(size: int | None) -> str:
    return "?" if size is None else format_size(size)
