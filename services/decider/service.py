"""The decider service: metric samples in, scale commands out; a thin loop around ``engine.VmEngine``.

Its modes are objects chosen once at start: how orders leave and who may command (modes.py), and which VMs it
sees (``WholeFleet``, or a group member's ``GroupShare``). It watches the pause bucket (``shared.pause_bucket``)
and holds a VM an operator paused, keeping its decision state.

It plans each host whose capacity it knows as a whole (``pool.HostPlanner``): from the HostState each host's
collector publishes on ``hotplug.hosts.<host>``, and from an actuator's host-full results. Where the HostState
gives the host's memory too, memory grows are planned against it (``memory.ledger.MemoryLedger``). A grow the
host has no room for is deferred; each deferral's start, grant or drop is stored in the event log as a
``Deferral`` that names its resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from nats.aio.msg import Msg
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge, Histogram

from services.decider.engine import HELD_KINDS, VmEngine
from services.decider.guard import GuardRails
from services.decider.harm import HarmSteer
from services.decider.mailbox import LatestPerKey
from services.decider.memory.engine import MemoryEngine
from services.decider.memory.ledger import MemoryLedger, MemoryView, within_host
from services.decider.memory.policy import MemoryPolicy
from services.decider.modes import Commands, DryRun, Leadership, Orders, Outlet, Recommend, Shadow, leadership_for
from services.decider.policies.base import Observation, PolicyBase
from services.decider.pool import DeferralEvent, HostPlanner, HostView, claim_of
from services.decider.rulebook import RuleBook, VmPlan
from services.decider.sharding import STATE_BUCKET, ShardedIntake, load_state, memory_state_key, state_key
from services.decider.steer_store import SteerStore
from shared import bus, subjects
from shared.codec import encode
from shared.config.schema import DeciderSettings
from shared.errors import UsageError
from shared.inbox import Inbox
from shared.messages import (
    Deferral,
    ErrorCode,
    HostState,
    MetricSample,
    PauseEvent,
    Resource,
    ScaleCommand,
    ScaleResult,
    short_text,
)
from shared.pause_bucket import PauseWatch
from shared.pauses import describe
from shared.runtime import ServiceContext
from shared.telemetry import ServiceMetrics
from shared.units import format_size

log = logging.getLogger(__name__)

# How long a stopping decider waits for its sent commands to be stored (a supervisor's stop timeout is longer).
STOP_GRACE_S = 25.0


_SETTINGS = DeciderSettings()  # the defaults, declared once with the flags' and the file's settings


@dataclass(frozen=True)
class DeciderConfig:
    name: str = _SETTINGS.name
    dry_run: bool = _SETTINGS.dry_run
    # Decide vCPUs only: samples' memory is not decided on (memory orders are the memory rule's otherwise).
    cpu_only: bool = _SETTINGS.cpu_only
    # Shadow: publish every recommendation as a proposal (hotplug.proposals.<name>.<host>.<vm>), command nothing.
    shadow: bool = _SETTINGS.shadow
    # Group: share the VMs with the other live members of this group (see sharding.py); `name` must be unique.
    group: str | None = None
    state_save_every_s: float = 5.0
    # Lease: replicas with the same lease name elect one active decider; commands name the lease and its term.
    lease: str | None = None
    lease_ttl_s: float = _SETTINGS.lease_ttl
    # A sample older than this (clock seconds) describes a VM that may have changed since: never act on it.
    max_sample_age_s: float = _SETTINGS.max_sample_age
    command_ttl_s: float = _SETTINGS.command_ttl
    # A VM with no sample for this long (clock seconds) is gone (a job that ended, a VM stopped or moved): its
    # decision state, host claim and series are dropped. Long enough that a collector restart or a paused VM keeps
    # its memory; a VM that comes back starts afresh, with a warm-up.
    forget_after_s: float = 3600.0
    # VMs whose newest sample may wait at once; beyond, the longest-waiting is shed (see mailbox.py).
    intake_capacity: int = _SETTINGS.intake_capacity

    def __post_init__(self) -> None:
        if self.shadow and self.dry_run:
            raise UsageError("shadow and dry_run exclude each other")
        if self.intake_capacity < 1:
            raise UsageError("intake_capacity must be at least 1")


class DeciderMetrics(ServiceMetrics):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.decisions = Counter(
            "hotplug_decider_decisions",
            "Scale decisions by policy, direction and reason class",
            ["policy", "direction", "reason_class", "mode"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hotplug_decider_decision_latency_seconds",
            "From sample time to the command being published",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "hotplug_decider_publish_failures",
            "Commands that could not be stored in the event log",
            registry=self.registry,
        )
        self.partitions = Gauge(
            "hotplug_decider_partitions_owned", "Metric partitions this group member owns", registry=self.registry
        )
        self.members = Gauge(
            "hotplug_decider_group_members", "Live members of this decider's group", registry=self.registry
        )
        self.resumed = Counter(
            "hotplug_decider_state_resumed", "VMs whose decision state was taken over from KV", registry=self.registry
        )
        self.vms = Gauge("hotplug_decider_vms", "VMs this decider keeps state for", registry=self.registry)
        self.price_factor = Gauge(
            "hotplug_decider_price_factor",
            "What the fleet's harm steer multiplies a policy's premium on unmet demand by (1: its law)",
            ["policy", "target_unmet_pct"],
            registry=self.registry,
        )
        self.realised_unmet = Gauge(
            "hotplug_decider_realised_unmet_ratio",
            "The unmet share of demand a policy's fleet left over the harm steer's window, as the decider knows it",
            ["policy", "target_unmet_pct"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "hotplug_decider_leader", "1 while this replica holds its lease (or has none)", registry=self.registry
        )
        self.term = Gauge("hotplug_decider_lease_term", "Leadership term this replica knows", registry=self.registry)
        self.held = Counter(
            "hotplug_decider_held",
            "Orders the policy wanted but the decider held back: after a "
            "refusal (by its error code), in warm-up, or over the change "
            "budget",
            ["reason"],
            registry=self.registry,
        )
        # Every series exists from the start (at 0), so dashboards and alerts never query a missing one. Children are
        # kept by label: ``labels()`` costs more than the policy's whole step for a held sample (docs/performance.md).
        self._held: dict[str, Any] = {
            reason: self.held.labels(reason) for reason in (*(code.value for code in ErrorCode), *HELD_KINDS)
        }
        self._decisions: dict[tuple[str, str, str, str], Any] = {}
        self.deferred_grows = Gauge(
            "hotplug_decider_deferred_grows",
            "Grows deferred now for want of room on the host, by resource (vcpu, memory)",
            ["host", "resource"],
            registry=self.registry,
        )
        self.oldest_deferral = Gauge(
            "hotplug_decider_oldest_deferral_seconds",
            "How long the host's longest-deferred grow of the resource has waited (0: none)",
            ["host", "resource"],
            registry=self.registry,
        )
        self.vm_rule = Gauge(
            "hotplug_decider_vm_rule_info",
            "The [[vm]] rule each VM runs under (rule 'default': none matches), its autoscale mode and policy",
            ["host", "vm", "rule", "autoscale", "policy"],
            registry=self.registry,
        )

    def count_held(self, label: str) -> None:
        child = self._held.get(label)
        if child is None:
            child = self._held[label] = self.held.labels(label)
        child.inc()

    def count_decision(self, policy: str, direction: str, kind: str, mode: str) -> None:
        key = (policy, direction, kind, mode)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = self.decisions.labels(*key)
        child.inc()


def observation_of(sample: MetricSample) -> Observation:
    return Observation(
        time=sample.time,
        vcpus=sample.online_vcpus,
        min_vcpus=max(1, sample.min_vcpus),
        max_vcpus=sample.max_vcpus,
        used_cores=min(sample.cpu_used_cores, float(sample.online_vcpus)),
        interval_s=sample.interval_s,
        pressure_cores=sample.pressure_cores,
        urgent=sample.urgent,
    )


class Intake(Protocol):
    """Which VMs this decider sees, and how their samples reach ``Decider.handle_sample``."""

    stores: bool  # whether it reads or writes JetStream (so the streams must exist)

    async def run(self) -> None: ...


class Decider:
    def __init__(
        self,
        ctx: ServiceContext[DeciderMetrics],
        policy: PolicyBase[Any, Any],
        rails: GuardRails,
        config: DeciderConfig,
        rules: RuleBook | None = None,
        memory_policy: MemoryPolicy | None = None,
    ) -> None:
        self.ctx = ctx
        self.policy = policy
        self.rails = rails
        self.config = config
        # The memory rule for every VM whose samples carry memory (None with --cpu-only: vCPUs only).
        self.memory_policy = None if config.cpu_only else (memory_policy or MemoryPolicy())
        # Each VM's rule, policy and bounds ([[vm]] rules); without rules every VM runs `policy` with `rails`.
        self.rules = rules if rules is not None else RuleBook.single(policy, rails)
        self._plans: dict[tuple[str, str], VmPlan] = {}
        self.metrics = ctx.metrics
        self.samples: Inbox[MetricSample] = Inbox("metric", MetricSample, ctx.metrics)
        self.results: Inbox[ScaleResult] = Inbox("result", ScaleResult, ctx.metrics)
        self.host_states: Inbox[HostState] = Inbox("host", HostState, ctx.metrics)
        self.engines: dict[tuple[str, str], VmEngine] = {}
        # Each policy's fleet harm steer (None: its price is not steered), resumed from the last state kept of a
        # steer of that policy and target (steer_store.py): across a rule reload, and across a restart.
        self.steers: dict[PolicyBase[Any, Any], HarmSteer | None] = {}
        self.steer_store = SteerStore(config.lease or config.name)
        self.memory_engines: dict[tuple[str, str], MemoryEngine] = {}
        # Memory decision states taken over from another group member, until the VM's first sample with memory.
        self.memory_handed_over: dict[tuple[str, str], bytes] = {}
        # Each host whose capacity is known, planned as a whole; other hosts' VMs are decided on one by one.
        self.planners: dict[str, HostPlanner] = {}
        # Each host whose memory is known (its HostState's, or a host-full memory result's): memory grows within it.
        self.memory_ledgers: dict[str, MemoryLedger] = {}
        self._deferral_ids = f"{config.name}-{secrets.token_hex(4)}-deferral"
        self._deferral_seq = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._publishing: set[asyncio.Task[None]] = set()
        self._next_sweep = float("-inf")
        self.pauses: PauseWatch | None = None
        # The modes, chosen once.
        orders = Orders(config.name)
        self.leadership: Leadership = leadership_for(config.lease, config.name, config.lease_ttl_s)
        self.outlet: Outlet
        if config.shadow:
            self.outlet = Shadow(orders, self._propose)
        elif config.dry_run:
            self.outlet = DryRun(orders, config.command_ttl_s)
        else:
            self.outlet = Commands(orders, self.leadership, config.command_ttl_s, self._send)
        # VMs whose rule says `recommend`: decided on and logged, never commanded (dry run and shadow send nothing).
        self.recommend: Outlet = Recommend(self.outlet)
        self.intake: Intake = GroupShare(self, config.group) if config.group else WholeFleet(self)
        self.metrics.vms.set_function(lambda: len(self.engines))
        self.metrics.leader.set_function(lambda: 1.0 if self.leadership.active else 0.0)
        self.metrics.term.set_function(lambda: float(self.leadership.term))

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            if self.pauses is not None:
                await self.pauses.stop()
            await self._keep_steers()
            await self._finish_publishing()

    @staticmethod
    async def _learn_pauses(pauses: PauseWatch) -> None:
        if not await pauses.start(patience_s=5.0):
            log.warning("pauses not known yet (the pause bucket is not readable); actuators still refuse paused VMs")

    async def _open_steer_store(self) -> None:
        try:
            read = await self.steer_store.open(self.ctx.js)
        except Exception as exc:  # no JetStream, or a bucket the broker would not give
            log.warning("harm steers kept in memory only, not across restarts: %s", exc)
            return
        log.info("harm steers kept in %s; %d stored for %s", STATE_BUCKET, read, self.steer_store.owner)

    async def _keep_steers(self) -> None:
        """On the way out, save every steer as it stands (what it counted since its factor was last set included)."""
        for policy, steer in self.steers.items():
            if steer is not None:
                self.steer_store.keep(policy.name, steer)
        try:
            await asyncio.wait_for(self.steer_store.flush(), STOP_GRACE_S)
        except Exception as exc:
            log.warning("harm steers not saved on the way out: %s", exc)

    async def _finish_publishing(self) -> None:
        """On the way out, let the commands already sent reach the event log: a command seen on the bus must
        be stored, so that it ends in a result."""
        publishing = [t for t in self._publishing if not t.done()]
        if publishing:
            log.info("waiting up to %.0f s for %d command(s) to be stored", STOP_GRACE_S, len(publishing))
            await asyncio.wait(publishing, timeout=STOP_GRACE_S)

    async def _run(self) -> None:
        if self.outlet.stores or self.intake.stores:
            await bus.ensure_streams(self.ctx.js)
        await self.ctx.nc.subscribe(subjects.ALL_RESULTS, cb=self._on_result)
        await self.ctx.nc.subscribe(subjects.ALL_HOSTS, cb=self._on_host)
        # The actuators enforce pauses whatever a decider knows; a decider that knows holds paused VMs instead of
        # sending orders to be refused. So samples are taken at once, not after the watch is in: until then, the
        # actuators' `paused` refusals hold those VMs.
        self.pauses = PauseWatch(self.ctx.js, on_change=self._on_pause_change)
        learning = asyncio.ensure_future(self._learn_pauses(self.pauses))
        self._tasks.add(learning)
        learning.add_done_callback(self._tasks.discard)
        await self.leadership.start(self.ctx.js, self._tasks)
        await self._open_steer_store()
        await self.intake.run()

    def engine(self, host: str, vm: str) -> VmEngine:
        key = (host, vm)
        engine = self.engines.get(key)
        if engine is None:
            plan = self.plan(host, vm)
            engine = self.engines[key] = VmEngine(plan.policy, plan.rails)
        return engine

    def plan(self, host: str, vm: str) -> VmPlan:
        """The VM's rule, mode, bounds and policy (cached until the rules change)."""
        key = (host, vm)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self.rules.plan(host, vm)
            s = plan.settings
            self.metrics.vm_rule.labels(host, vm, s.rule, s.autoscale, s.policy).set(1)
        return plan

    def forget(self, key: tuple[str, str]) -> None:
        """Drop a VM handed over to another decider, or gone: its engines, its host claim and its rule's series."""
        self.engines.pop(key, None)
        self.memory_engines.pop(key, None)
        self.memory_handed_over.pop(key, None)
        planner = self.planners.get(key[0])
        if planner is not None:
            self._deferrals(key[0], planner.forget(key[1]), self.ctx.clock.now())
        ledger = self.memory_ledgers.get(key[0])
        if ledger is not None:
            self._deferrals(key[0], ledger.forget(key[1]), self.ctx.clock.now())
        plan = self._plans.pop(key, None)
        if plan is not None:
            s = plan.settings
            with contextlib.suppress(KeyError):
                self.metrics.vm_rule.remove(*key, s.rule, s.autoscale, s.policy)

    def forget_departed(self, now: float) -> list[tuple[str, str]]:
        """Forget the VMs not sampled for ``forget_after_s`` (checked every tenth of it, as samples come)."""
        horizon = now - self.config.forget_after_s
        gone = [key for key, engine in self.engines.items() if engine.last_time < horizon]
        for key in gone:
            self.forget(key)
        if gone:
            log.info("forgot %d VMs not sampled for %.0f s: %s", len(gone), self.config.forget_after_s, gone[:10])
        return gone

    def use_rules(self, rules: RuleBook) -> str:
        """Take new rules (a SIGHUP reload): each VM keeps its engine, and with it its decision state, under its
        new bounds, mode and rails; a VM whose policy changes starts that policy's memory afresh (engine.py)."""
        self.rules = rules
        for policy, steer in self.steers.items():
            if steer is not None:
                self.steer_store.keep(policy.name, steer)  # a rule of the same policy and target carries it on
        self.steers.clear()
        old = dict(self._plans)
        for (host, vm), plan in old.items():
            s = plan.settings
            with contextlib.suppress(KeyError):
                self.metrics.vm_rule.remove(host, vm, s.rule, s.autoscale, s.policy)
        self._plans.clear()
        fresh = []
        for (host, vm), engine in self.engines.items():
            plan = self.plan(host, vm)
            was = old.get((host, vm))
            if was is None or (was.settings.min_vcpus, was.settings.max_vcpus) != (
                plan.settings.min_vcpus,
                plan.settings.max_vcpus,
            ):
                engine.allowed = None  # the sizes an actuator allowed under the old bounds: ask again
            if plan.policy.name != engine.policy.name:
                log.info("%s/%s: policy %s -> %s, started afresh", host, vm, engine.policy.name, plan.policy.name)
                engine.switch_policy(plan.policy, plan.rails)
                fresh.append(vm)
            else:
                engine.policy, engine.rails = plan.policy, plan.rails
        for host, vm in old.keys() - self.engines.keys():
            self.plan(host, vm)  # VMs without an engine (off): their rule's series anew
        kept = len(self.engines) - len(fresh)
        return f"{len(rules.rules)} [[vm]] rules; {kept} VMs keep their decision state" + (
            f", {len(fresh)} start a new policy afresh ({', '.join(sorted(fresh))})" if fresh else ""
        )

    def handle_sample(self, sample: MetricSample) -> ScaleCommand | None:
        now = self.ctx.clock.now()
        if now - sample.time > self.config.max_sample_age_s:
            self.metrics.dropped.labels(self.metrics.service, "metric", "stale").inc()
            log.debug("stale sample for %s (%.1f s old)", sample.vm, now - sample.time)
            return None
        if now >= self._next_sweep:
            self._next_sweep = now + self.config.forget_after_s / 10
            self.forget_departed(now)
        plan = self.plan(sample.host, sample.vm)
        if plan.settings.autoscale == "off":
            return None  # its rule leaves it alone: no state, no proposal, no command
        engine = self.engine(sample.host, sample.vm)
        pause = self.pauses.book.paused(sample.host, sample.vm, time.time()) if self.pauses else None
        proposal = engine.propose(self._priced(plan.policy, plan.observe(observation_of(sample))))
        decision = None
        if proposal is not None:
            limit = None
            planner = self.planners.get(sample.host)
            if planner is not None:
                pinned = pause is not None or plan.settings.autoscale == "recommend"
                claim = claim_of(sample.vm, proposal, plan.settings, engine.pending_target, pinned=pinned)
                limit, events = planner.claim(claim, now)
                if events:
                    self._deferrals(sample.host, events, now)
            decision = engine.decide(proposal, paused=describe(pause) if pause else None, limit=limit)
        if engine.held is not None:
            self.metrics.count_held(engine.held.label)
            log.debug("held %s/%s: %s", sample.host, sample.vm, engine.held.reason)
        outlet = self.recommend if plan.settings.autoscale == "recommend" else self.outlet
        if decision is not None:
            direction = "up" if decision.target > sample.online_vcpus else "down"
            self.metrics.count_decision(engine.policy.name, direction, decision.kind, outlet.mode)
        if sample.memory is not None and self.memory_policy is not None and outlet.mode != "shadow":
            self._decide_memory(sample, plan, describe(pause) if pause else None, outlet, now)
        return outlet.emit(sample, engine, decision, now)

    def _new_steer(self, policy: PolicyBase[Any, Any], now: float) -> HarmSteer | None:
        """The policy's fleet steer, its factor and realised share exported (read when scraped)."""
        steer = policy.harm_steer()
        if steer is not None:
            self.steer_store.resume(policy.name, steer, now)
            labels = (policy.name, f"{100 * steer.target:g}")
            self.metrics.price_factor.labels(*labels).set_function(lambda: steer.factor)
            self.metrics.realised_unmet.labels(*labels).set_function(lambda: steer.realised_share or 0.0)
        return steer

    def _priced(self, policy: PolicyBase[Any, Any], obs: Observation) -> Observation:
        """``obs`` counted by the harm steer of the fleet ``policy`` decides, carrying that fleet's price factor."""
        if policy not in self.steers:
            self.steers[policy] = self._new_steer(policy, obs.time)
        steer = self.steers[policy]
        if steer is None:
            return obs
        period = steer.period
        factor = steer.advance(obs.time)  # what the fleet showed before this sample's time, as replay folds it
        if steer.period != period:
            self.steer_store.keep(policy.name, steer)  # a new factor: what a restart resumes from
        steer.observe(obs)
        return obs if factor == 1.0 else msgspec.structs.replace(obs, price_factor=factor)

    def _decide_memory(
        self, sample: MetricSample, plan: VmPlan, paused: str | None, outlet: Outlet, now: float
    ) -> None:
        """The memory rule's order for ``sample``'s VM, if any, out through ``outlet`` (memory's own lane)."""
        assert sample.memory is not None
        assert self.memory_policy is not None
        key = (sample.host, sample.vm)
        engine = self.memory_engines.get(key)
        if engine is None:
            s = plan.settings
            bounds = (s.min_memory_bytes, s.max_memory_bytes)
            engine = self.memory_engines[key] = MemoryEngine(self.memory_policy, bounds)
            handed = self.memory_handed_over.pop(key, None)
            if handed is not None and engine.restore(handed):
                self.metrics.resumed.inc()
                log.info("took over the memory of %s/%s with its decision state", *key)
        decision = engine.step(sample.time, sample.memory, sample.interval_s, paused, urgent=sample.urgent)
        ledger = self.memory_ledgers.get(sample.host)
        if ledger is not None:
            decision, events = within_host(
                ledger,
                sample.vm,
                sample.memory.size_bytes,
                engine,
                decision,
                priority=plan.settings.priority,
                interval_s=sample.interval_s,
                time=sample.time,
                now=now,
            )
            if events:
                self._deferrals(sample.host, events, now)
        if engine.held is not None:
            self.metrics.count_held(engine.held.label)
            log.debug("memory of %s/%s held: %s", sample.host, sample.vm, engine.held.reason)
        if decision is None:
            return
        direction = "up" if decision.target > sample.memory.size_bytes else "down"
        self.metrics.count_decision(self.memory_policy.name, direction, decision.kind, outlet.mode)
        outlet.emit(sample, engine, decision, now)

    def _send(self, command: ScaleCommand) -> None:
        # Publishing waits for the event log's acknowledgement; other samples must not wait behind it.
        task = asyncio.ensure_future(self._publish(command))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    def handle_host(self, state: HostState) -> None:
        """A host's capacity and what is committed on it: plan its VMs as a whole from now on."""
        now = self.ctx.clock.now()
        planner = self.planners.get(state.host)
        if planner is None:
            self._plan_host(state.host, HostView.of(state))
        else:
            self._deferrals(state.host, planner.observe_host(HostView.of(state), now), now)
        memory = MemoryView.of(state)
        ledger = self.memory_ledgers.get(state.host)
        if memory is None:
            if ledger is not None:  # its source no longer reports the host's memory: no limit, as for any such host
                log.info("host %s: its memory is no longer known, memory grows are no longer planned", state.host)
                del self.memory_ledgers[state.host]
                self._deferrals(state.host, tuple(e for vm in list(ledger.vms) for e in ledger.forget(vm)), now)
                for gauge in (self.metrics.deferred_grows, self.metrics.oldest_deferral):
                    with contextlib.suppress(KeyError):
                        gauge.remove(state.host, "memory")
        elif ledger is None:
            self._plan_memory(state.host, memory)
        else:
            self._deferrals(state.host, ledger.observe_host(memory, now), now)

    def _plan_host(self, host: str, view: HostView) -> HostPlanner:
        planner = self.planners[host] = HostPlanner(view)
        log.info("planning host %s as a whole: capacity %d vCPUs, %d committed", host, view.capacity, view.committed)
        self.metrics.deferred_grows.labels(host, "vcpu").set_function(planner.deferred)
        self.metrics.oldest_deferral.labels(host, "vcpu").set_function(
            lambda: planner.oldest_deferral(self.ctx.clock.now())
        )
        return planner

    def _plan_memory(self, host: str, view: MemoryView) -> MemoryLedger:
        ledger = self.memory_ledgers[host] = MemoryLedger(view)
        log.info(
            "planning host %s's memory: capacity %s, %s committed",
            host,
            format_size(view.capacity),
            format_size(view.committed),
        )
        self.metrics.deferred_grows.labels(host, "memory").set_function(ledger.deferred)
        self.metrics.oldest_deferral.labels(host, "memory").set_function(
            lambda: ledger.oldest_deferral(self.ctx.clock.now())
        )
        return ledger

    def _deferrals(self, host: str, events: tuple[DeferralEvent, ...], now: float) -> None:
        """Record deferrals that start, are granted or are dropped: in the event log when this decider commands,
        in its log otherwise (a dry run, a shadow, a standby)."""
        for event in events:
            memory = event.resource is Resource.MEMORY
            size: Callable[[int], str] = format_size if memory else str
            log.info(
                "%s/%s %s grow %s: %s -> %s wanted, %s granted: %s",
                host,
                event.vm,
                event.resource.value,
                event.action.value,
                size(event.vcpus),
                size(event.wanted),
                size(event.granted),
                event.reason,
            )
            if self.outlet.mode != "command" or not self.leadership.active:
                continue
            self._deferral_seq += 1
            sizes = (
                {
                    "memory_bytes": event.vcpus,
                    "wanted_memory_bytes": event.wanted,
                    "granted_memory_bytes": event.granted,
                }
                if memory
                else {"vcpus": event.vcpus, "wanted_vcpus": event.wanted, "granted_vcpus": event.granted}
            )
            deferral = Deferral(
                time=now,
                host=host,
                vm=event.vm,
                action=event.action,
                decider=self.config.name,
                since=max(0.0, event.since),
                priority=event.priority,
                reason=short_text(event.reason),
                resource=event.resource,
                **sizes,
            )
            task = asyncio.ensure_future(self._store(deferral, f"{self._deferral_ids}-{self._deferral_seq}"))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    async def _store(self, deferral: Deferral, msg_id: str) -> None:
        try:
            await bus.publish_durable(
                self.ctx.js,
                subjects.deferrals(deferral.host, deferral.vm, deferral.resource),
                encode(deferral),
                msg_id=msg_id,
            )
        except Exception as exc:
            log.error("deferral of %s/%s not stored: %s", deferral.host, deferral.vm, exc)

    async def _on_host(self, msg: Msg) -> None:
        state = self.host_states.open(msg.subject, msg.data)
        if state is not None:
            self.handle_host(state)

    def _propose(self, proposal: ScaleCommand) -> None:
        subject = subjects.proposals(self.config.name, proposal.host, proposal.vm)
        task = asyncio.ensure_future(self.ctx.nc.publish(subject, encode(proposal)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, command: ScaleCommand) -> None:
        try:
            await bus.publish_durable(
                self.ctx.js, subjects.commands(command.host, command.vm), encode(command), msg_id=command.id
            )
            self.metrics.latency.observe(max(0.0, self.ctx.clock.now() - (command.sample_time or command.time)))
        except Exception as exc:
            self.metrics.publish_failures.inc()
            key = (command.host, command.vm)
            memory = self.memory_engines.get(key) if command.resource is Resource.MEMORY else None
            (memory or self.engine(*key)).unsent(command.id)
            log.error("command %s for %s not stored: %s", command.id, command.vm, exc)

    def _on_pause_change(self, host: str, vm: str, pause: PauseEvent | None) -> None:
        if pause is not None:
            log.info("%s/%s %s", host, vm, describe(pause))
            return
        log.info("%s/%s resumed", host, vm)
        for engine in (self.engines.get((host, vm)), self.memory_engines.get((host, vm))):
            if engine is not None:
                engine.lift_holds(ErrorCode.PAUSED)  # a paused refusal that raced the pause no longer stands

    async def _on_result(self, msg: Msg) -> None:
        result = self.results.open(msg.subject, msg.data)
        if result is None:
            return
        if result.resource is Resource.MEMORY:
            if result.error_code is ErrorCode.HOST_FULL:
                self._learn_memory_full(result)
            # Memory is the VM's other lane: its refusals hold memory orders only (memory/engine.py).
            memory = self.memory_engines.get((result.host, result.vm))
            hold = memory.learn_result(result) if memory is not None else None
            if hold is not None:
                log.info(
                    "%s/%s memory refused (%s): held for %.0f s",
                    result.host,
                    result.vm,
                    hold.code,
                    hold.until - result.time,
                )
            return
        if result.error_code is ErrorCode.HOST_FULL:
            self._learn_full(result)
        engine = self.engines.get((result.host, result.vm))
        if engine is None:
            return
        # Allowed sizes, the actuator's rate limit, the change budget, and a hold after a refusal (engine.py).
        hold = engine.learn_result(result, self.ctx.clock.now())
        if hold is not None:
            log.info(
                "%s/%s refused (%s): held for %.0f s%s",
                result.host,
                result.vm,
                hold.code,
                hold.until - result.time,
                " and until a newer sample" if hold.after_sample is not None else "",
            )

    def _learn_full(self, result: ScaleResult) -> None:
        """A host-full refusal says how much room the host really had: plan the host from it."""
        capacity, committed = result.host_capacity_vcpus, result.host_committed_vcpus
        if capacity is None or committed is None:
            return
        planner = self.planners.get(result.host)
        if planner is None:
            self._plan_host(result.host, HostView(capacity, committed, capacity, time=result.time))
        else:
            planner.learn_full(capacity, committed, result.time)

    def _learn_memory_full(self, result: ScaleResult) -> None:
        """A memory grow refused for want of room says how much memory the host really had: plan from it."""
        capacity, committed = result.host_capacity_memory_bytes, result.host_committed_memory_bytes
        if capacity is None or committed is None:
            return
        ledger = self.memory_ledgers.get(result.host)
        if ledger is None:
            self._plan_memory(result.host, MemoryView(capacity, committed, result.time))
        else:
            ledger.learn_full(capacity, committed, result.time)


class WholeFleet:
    """Every VM's samples, from the core subscription; each VM's newest sample waits its turn (mailbox.py)."""

    stores = False

    def __init__(self, decider: Decider) -> None:
        self.decider = decider
        # Raw samples by subject (one per VM): decoded only when their turn comes, so a flood costs little.
        self.mailbox: LatestPerKey[str, bytes] = LatestPerKey(decider.config.intake_capacity)
        self._ready = asyncio.Event()
        metrics = decider.metrics
        self._shed = metrics.dropped.labels(metrics.service, "metric", "shed")

    async def run(self) -> None:
        d = self.decider
        worker = asyncio.ensure_future(self._drain())
        d._tasks.add(worker)
        await d.ctx.nc.subscribe(subjects.ALL_METRICS, cb=self._on_sample)
        await d.ctx.nc.flush()
        mode = {"dry-run": " (dry run: no commands)", "shadow": " (shadow: proposals only)"}.get(d.outlet.mode, "")
        log.info(
            "decider %s running policy %s%s; %d [[vm]] rules", d.config.name, d.policy.name, mode, len(d.rules.rules)
        )
        await asyncio.Event().wait()

    async def _on_sample(self, msg: Msg) -> None:
        shed = self.mailbox.put(msg.subject, msg.data)
        # A shed sample is still judged (a decode, far less than a decision): a malformed one is dropped as such,
        # counted and logged, rather than hidden among the shed.
        if shed is not None and self.decider.samples.judge(*shed):
            self._shed.inc()
        self._ready.set()

    async def _drain(self) -> None:
        """Decide on each VM's newest sample, in the order the VMs arrived."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            handled = 0
            while (item := self.mailbox.pop()) is not None:
                handled += 1
                try:
                    sample = self.decider.samples.open(*item)
                    acted = sample is not None and self.decider.handle_sample(sample) is not None
                except Exception:
                    log.exception("sample on %s not handled", item[0])
                    acted = False
                if acted or handled % 64 == 0:
                    # Let a command go out now, and let the intake take in what arrived meanwhile (replacing
                    # what is now stale), rather than working through a backlog first.
                    await asyncio.sleep(0)


class GroupShare:
    """The share of the VMs this member of a group owns (sharding.py), with their decision state handed over
    through KV when the share changes."""

    stores = True

    def __init__(self, decider: Decider, group: str) -> None:
        self.decider = decider
        self.group = group
        self._partition_of: dict[tuple[str, str], int] = {}
        self._touched: set[tuple[str, str]] = set()
        self._state: KeyValue  # the decision state bucket, open before the first sample is taken

    async def run(self) -> None:
        d = self.decider
        intake = ShardedIntake(d.ctx.js, self.group, d.config.name, self._on_stored_sample, self._on_share)
        self._state = await intake.open_state()
        saver = asyncio.ensure_future(self._save_periodically())
        log.info("decider %s joins group %s (policy %s)", d.config.name, self.group, d.policy.name)
        try:
            await intake.run()
        finally:
            saver.cancel()

    async def _on_stored_sample(self, subject: str, data: bytes) -> None:
        sample = self.decider.samples.open(subject, data)
        if sample is None:
            return
        key = (sample.host, sample.vm)
        if key not in self.decider.engines:
            await self._resume(key)
            partition = subjects.stored_partition(subject)
            assert partition is not None  # the intake hands on only its own partitions' subjects
            self._partition_of[key] = partition
        self._touched.add(key)
        if self.decider.handle_sample(sample) is not None:
            await asyncio.sleep(0)

    async def _resume(self, key: tuple[str, str]) -> None:
        engine = self.decider.engine(*key)
        data = await load_state(self._state, state_key(self.group, *key))
        if data is not None and engine.restore(data):
            self.decider.metrics.resumed.inc()
            log.info("took over %s/%s with its decision state", *key)
        if self.decider.memory_policy is not None:
            memory = await load_state(self._state, memory_state_key(self.group, *key))
            if memory is not None:
                self.decider.memory_handed_over[key] = memory

    async def _save(self, keys: list[tuple[str, str]]) -> None:
        for key in keys:
            engine = self.decider.engines.get(key)
            if engine is not None:
                await self._state.put(state_key(self.group, *key), engine.snapshot())
            memory = self.decider.memory_engines.get(key)
            if memory is not None:
                await self._state.put(memory_state_key(self.group, *key), memory.snapshot())

    async def _on_share(self, share: frozenset[int]) -> None:
        """Hand over the VMs of partitions this member no longer owns: save their state, then forget them."""
        self.decider.metrics.partitions.set(len(share))
        lost = [key for key, p in self._partition_of.items() if p not in share]
        with contextlib.suppress(Exception):
            await self._save(lost)
        for key in lost:
            self.decider.forget(key)
            self._partition_of.pop(key, None)
            self._touched.discard(key)

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.decider.config.state_save_every_s)
            touched, self._touched = list(self._touched), set()
            try:
                await self._save(touched)
            except Exception as exc:
                log.warning("decision state of %d VMs not saved: %s", len(touched), exc)
