"""The collector service: every interval, read the source and publish one MetricSample per VM, then, where the
source reads its host, one HostState (capacity under the config's ``[[host]]`` rules, committed, free, waiting) on
``hotplug.hosts.<host>``. The rules are replaced on SIGHUP (``use_host_rules``).

With an ``UrgentGate`` (``services.collector.urgent``), ``pressure_fired`` asks for an extra, urgent round between
the regular ones; with ``watch_pressure``, the collector starts the source's own watch for pressure where it has one
(``services.collector.sources.base.pressure_watcher``: the agent's PSI trigger, the ``qemu`` source's reading of the
test guest's PSI lines) and gates it to the watch's window. Either way the source is read at once (at most one a
gate window, and once the interval since the last round is long enough to measure) and each VM's sample goes out
marked ``urgent``. Its interval runs from the last round, and the next regular round's from it; the regular rounds
keep their pace. With ``watch_pressure`` the collector also follows rises, for the VMs no watch covers (a source
without one, or whose watch cannot start, or a guest that cannot say its pressure): an urgent round a quarter
interval after one in which a VM's use rose (``urgent.rose``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence

import msgspec
from prometheus_client import Counter, Gauge, Histogram

from services.collector.hoststate import host_state
from services.collector.rates import sample_from
from services.collector.sources.base import HostReading, PressureWatch, Reading, Source, host_reader, pressure_watcher
from services.collector.urgent import UrgentGate, follow_up_s, rose
from shared import subjects
from shared.codec import encode
from shared.config.schema import HostRule
from shared.messages import HostState
from shared.runtime import ServiceContext
from shared.telemetry import ServiceMetrics

log = logging.getLogger(__name__)


class CollectorMetrics(ServiceMetrics):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.published = Counter(
            "hotplug_collector_samples_published", "Metric samples published", registry=self.registry
        )
        self.urgent = Counter(
            "hotplug_collector_urgent_rounds",
            "Pressure triggers that fired: sent (an urgent round went out) or refused (one went out within the window)",
            ["outcome"],
            registry=self.registry,
        )
        self.read_failures = Counter(
            "hotplug_collector_read_failures", "Source reads that failed", ["source"], registry=self.registry
        )
        self.sampling = Histogram(
            "hotplug_collector_sampling_duration_seconds",
            "Wall time to read the source and publish one round",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.online = Gauge(
            "hotplug_vm_online_vcpus",
            "Online vCPUs of each VM, as last sampled",
            ["host", "vm"],
            registry=self.registry,
        )
        self.used = Gauge(
            "hotplug_vm_cpu_used_cores",
            "CPU used by each VM over the last interval, in cores",
            ["host", "vm"],
            registry=self.registry,
        )
        self.pressure = Gauge(
            "hotplug_vm_pressure_cores",
            "Demand each VM could not run over the last interval, in cores",
            ["host", "vm"],
            registry=self.registry,
        )
        self.per_vm = (self.online, self.used, self.pressure)
        self.host_capacity = Gauge(
            "hotplug_host_capacity_vcpus",
            "vCPUs the host may commit: (cpus - reserve_cpus) x overcommit, floored ([[host]] rules)",
            ["host"],
            registry=self.registry,
        )
        self.host_committed = Gauge(
            "hotplug_host_committed_vcpus",
            "Online vCPUs of every running VM of the host, managed or not",
            ["host"],
            registry=self.registry,
        )
        self.host_free = Gauge(
            "hotplug_host_free_vcpus",
            "Capacity minus committed (negative: overcommitted)",
            ["host"],
            registry=self.registry,
        )
        self.host_used = Gauge(
            "hotplug_host_used_cores",
            "Cores the host's sampled VMs used over the last interval",
            ["host"],
            registry=self.registry,
        )
        self.host_waiting = Gauge(
            "hotplug_host_waiting_vms", "VMs (jobs) waiting to start on the host", ["host"], registry=self.registry
        )
        self.host_wait = Gauge(
            "hotplug_host_wait_cores",
            "Running vCPUs that found no free host core over the last interval, in cores (overcommit's cost)",
            ["host"],
            registry=self.registry,
        )

    def show_host(self, state: HostState) -> None:
        self.host_capacity.labels(state.host).set(state.capacity_vcpus)
        self.host_committed.labels(state.host).set(state.committed_vcpus)
        self.host_free.labels(state.host).set(state.free_vcpus)
        self.host_waiting.labels(state.host).set(state.waiting_vms)
        if state.used_cores is not None:
            self.host_used.labels(state.host).set(state.used_cores)
        if state.host_wait_cores is not None:
            self.host_wait.labels(state.host).set(state.host_wait_cores)

    def host_series(self, host: str) -> None:
        """Every host series at 0 from the start, so a dashboard has data before the first HostState."""
        for gauge in (
            self.host_capacity,
            self.host_committed,
            self.host_free,
            self.host_used,
            self.host_waiting,
            self.host_wait,
        ):
            gauge.labels(host)

    def forget_vm(self, host: str, vm: str) -> None:
        """End the series of a VM the source no longer reports."""
        for gauge in self.per_vm:
            with contextlib.suppress(KeyError):
                gauge.remove(host, vm)


class Collector:
    def __init__(
        self,
        ctx: ServiceContext[CollectorMetrics],
        source: Source,
        interval_s: float = 1.0,
        host_rules: Sequence[HostRule] = (),
        urgent: UrgentGate | None = None,
        watch_pressure: bool = False,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval must be positive")
        self.ctx = ctx
        self.source = source
        self.interval_s = interval_s
        self.urgent = urgent
        self.watch_pressure = watch_pressure
        # One round at a time: an urgent round and a regular one that overlapped would make intervals that overlap.
        self._round = asyncio.Lock()
        self._last_round = -math.inf  # when the last round read the source (the shared clock)
        self._fired = asyncio.Event()
        self.metrics: CollectorMetrics = ctx.metrics
        self.host_rules: tuple[HostRule, ...] = tuple(host_rules)
        self._previous: dict[str, Reading] = {}
        # Following rises (follow_rises): the delay of a follow-up, each VM's last use, and the follow-up waiting to go.
        self._follow_s: float | None = None
        self._used: dict[str, float] = {}
        self._follow_up: asyncio.Task[None] | None = None
        self._read_host = host_reader(source)
        self._previous_host: HostReading | None = None
        if self._read_host is not None:
            self.metrics.host_series(ctx.host)

    def use_host_rules(self, rules: Sequence[HostRule]) -> str:
        """Take the ``[[host]]`` rules of a reloaded config file from the next round on; a summary for the log."""
        self.host_rules = tuple(rules)
        return f"{len(self.host_rules)} [[host]] rules set the host's capacity"

    def pressure_fired(self) -> None:
        """A pressure trigger fired (called on the event loop): an urgent round follows, unless the gate refuses it."""
        self._fired.set()

    def start_pressure_watch(self) -> PressureWatch | None:
        """Start the source's watch for pressure (on the running loop), urgent rounds gated to its window; None when
        the source has none or cannot watch now (logged: regular rounds still serve)."""
        watcher = pressure_watcher(self.source)
        if watcher is None:
            log.info("source %s has no watch for pressure: regular rounds only", self.source.name)
            return None
        try:
            watch = watcher(self.pressure_fired)
        except OSError as exc:  # an old kernel, PSI off (psi=0), no /proc/pressure
            log.warning("source %s cannot watch for pressure (%s): regular rounds only", self.source.name, exc)
            return None
        self.urgent = UrgentGate(watch.window_s)
        log.info("watching %s for pressure: an urgent round at most every %g s", self.source.name, watch.window_s)
        return watch

    async def run(self) -> None:
        clock = self.ctx.clock
        next_tick = clock.now()
        watch = self.start_pressure_watch() if self.watch_pressure else None
        if self.watch_pressure:
            self.follow_rises()
        serving = None if self.urgent is None else asyncio.ensure_future(self._serve_urgent())
        try:
            while True:
                await self.collect_once()
                next_tick += self.interval_s
                delay = next_tick - clock.now()
                if delay < 0:  # fell behind (a slow source): skip missed ticks rather than burst
                    next_tick = clock.now()
                    delay = 0
                await clock.sleep(delay)
        finally:
            if watch is not None:
                watch.close()
            for task in (serving, self._follow_up):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await self.source.close()

    def follow_rises(self) -> None:
        """Urgent rounds also follow rises: a source's watch, if it has one, sees only the guests that can say their
        pressure (the libvirt source's watch, only the project's test guest). Without a watch, at most one a
        follow-up delay; with one, within its gate."""
        self._follow_s = follow_up_s(self.interval_s)
        if self.urgent is None:
            self.urgent = UrgentGate(self._follow_s)
        log.info("following rises of %s: an urgent round %g s after a VM's use rose", self.source.name, self._follow_s)

    def _follow(self) -> None:
        """Ask for an urgent round a follow-up delay from now, unless one is waiting already."""
        if self._follow_s is None or (self._follow_up is not None and not self._follow_up.done()):
            return
        self._follow_up = asyncio.ensure_future(self._fire_after(self._follow_s))

    async def _fire_after(self, delay_s: float) -> None:
        await self.ctx.clock.sleep(delay_s)
        self.pressure_fired()

    async def _serve_urgent(self) -> None:
        while True:
            await self._fired.wait()
            self._fired.clear()
            try:
                await self.collect_urgent()
            except Exception:  # as a failed regular round: the next firing is served all the same
                log.exception("urgent round failed")

    async def collect_urgent(self) -> int:
        """An urgent round, if the gate lets one out now: the samples it published (0 when refused)."""
        gate = self.urgent
        if gate is None:
            return 0
        clock = self.ctx.clock
        async with self._round:
            delay = gate.delay(clock.now(), self._last_round)
            if delay is None:
                self.metrics.urgent.labels("refused").inc()
                return 0
            if delay > 0:
                await clock.sleep(delay)
            gate.sent(clock.now())
            self.metrics.urgent.labels("sent").inc()
            return await self._collect(urgent=True)

    async def collect_once(self) -> int:
        async with self._round:
            return await self._collect(urgent=False)

    async def _collect(self, *, urgent: bool) -> int:
        started = time.perf_counter()
        self._last_round = self.ctx.clock.now()
        try:
            readings = await self.source.read()
        except Exception as exc:  # a source failure must not stop sampling; the VMs become "unknown"
            self.metrics.read_failures.labels(self.source.name).inc()
            log.warning("source %s failed: %s", self.source.name, exc)
            return 0
        published = 0
        used = 0.0
        rising = False
        seen = set()
        for reading in readings:
            seen.add(reading.vm)
            previous = self._previous.get(reading.vm)
            self._previous[reading.vm] = reading
            if previous is None:
                continue
            sample = sample_from(previous, reading, self.ctx.host, self.source.name)
            if sample is None:
                continue
            if urgent:
                sample = msgspec.structs.replace(sample, urgent=True)
            if self._follow_s is not None:
                rising |= rose(self._used.get(sample.vm), sample.cpu_used_cores, sample.online_vcpus)
                self._used[sample.vm] = sample.cpu_used_cores
            await self.ctx.nc.publish(subjects.metrics(sample.host, sample.vm), encode(sample))
            self.metrics.online.labels(sample.host, sample.vm).set(sample.online_vcpus)
            self.metrics.used.labels(sample.host, sample.vm).set(sample.cpu_used_cores)
            if sample.pressure_cores is not None:
                self.metrics.pressure.labels(sample.host, sample.vm).set(sample.pressure_cores)
            published += 1
            used += sample.cpu_used_cores
        for gone in set(self._previous) - seen:
            del self._previous[gone]
            self._used.pop(gone, None)
            self.metrics.forget_vm(self.ctx.host, gone)  # a job that ended, a VM stopped: its series end too
        self.metrics.published.inc(published)
        if rising:
            self._follow()
        if urgent:
            return published  # the host's state keeps the regular pace: the trigger was about a VM's pressure
        await self.publish_host(used if published or not readings else None)  # None: no interval yet
        self.metrics.sampling.observe(time.perf_counter() - started)
        return published

    async def publish_host(self, used_cores: float | None) -> HostState | None:
        """Read the host (if the source can) and publish its HostState; a failed read is counted and skipped."""
        if self._read_host is None:
            return None
        try:
            reading = await self._read_host()
        except Exception as exc:  # as for read(): the host is unknown this round, sampling goes on
            self.metrics.read_failures.labels(self.source.name).inc()
            log.warning("source %s failed to read the host: %s", self.source.name, exc)
            return None
        if reading is None:
            return None
        state = host_state(
            self._previous_host,
            reading,
            host=self.ctx.host,
            rules=self.host_rules,
            used_cores=used_cores,
            source=self.source.name,
        )
        self._previous_host = reading
        await self.ctx.nc.publish(subjects.hosts(state.host), encode(state))
        self.metrics.show_host(state)
        return state
