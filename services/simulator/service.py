"""The simulator service: a simulated host (``services.simulator.host``) on the bus, answering the requests of
``shared.sim_api``: stats (the running VMs' counters and the host), hotplug, memory (a memory resize, answered once
taken), load, and jobs (what became of every job that arrived). Job times count from the simulator's start.

Each guest's PSI trigger on CPU (``SimulatorConfig.psi_trigger``) is said on ``hotplug.sim.<host>.pressure`` the
moment it fires, as the guest agent's kernel would wake it: the host checks a VM's stall as it integrates it
(``services.simulator.stall``), and a timer integrates it at the moments a trigger could fire (a VM's demand steps,
or a stalled VM's trigger is due) rather than polling, so a step in demand between two stats requests is said on
time."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.aio.msg import Msg
from prometheus_client import Counter, Gauge

from services.simulator import scenario
from services.simulator.cloud import HotplugRefused
from services.simulator.host import Host
from services.simulator.scenario import SimulatorConfig
from shared import subjects
from shared.config.schema import HostRule
from shared.runtime import ServiceContext
from shared.sim_api import (
    HotplugReply,
    HotplugRequest,
    JobsReply,
    LoadReply,
    LoadRequest,
    MemoryResizeReply,
    MemoryResizeRequest,
    SimHost,
    SimPressure,
    StatsReply,
)
from shared.telemetry import ServiceMetrics

log = logging.getLogger(__name__)

__all__ = ["SimulatorConfig", "SimulatorMetrics", "SimulatorService"]


class SimulatorMetrics(ServiceMetrics):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.vcpus = Gauge(
            "hotplug_sim_vm_online_vcpus", "Online vCPUs of each simulated VM", ["vm"], registry=self.registry
        )
        self.demand = Gauge(
            "hotplug_sim_vm_demand_cores",
            "Current demand of each simulated VM, in cores",
            ["vm"],
            registry=self.registry,
        )
        self.hotplugs = Counter(
            "hotplug_sim_hotplug_operations",
            "Hot-plug operations by kind and outcome",
            ["op", "outcome"],
            registry=self.registry,
        )
        self.hotplugs_under_way = Gauge(
            "hotplug_sim_hotplugs_in_progress",
            "Hot-plug operations begun and not yet finished",
            ["op"],
            registry=self.registry,
        )
        self.host_cores = Gauge(
            "hotplug_sim_host_cores", "Physical cores of the simulated host", registry=self.registry
        )
        self.host_capacity = Gauge(
            "hotplug_sim_host_capacity_vcpus", "vCPUs the simulated host may commit", registry=self.registry
        )
        self.host_committed = Gauge(
            "hotplug_sim_host_committed_vcpus",
            "Online vCPUs of the running VMs, plus vCPUs being plugged",
            registry=self.registry,
        )
        self.host_wait = Counter(
            "hotplug_sim_host_wait_core_seconds",
            "Core-seconds runnable vCPUs waited for a host core (more runnable than cores)",
            registry=self.registry,
        )
        self.jobs_waiting = Gauge(
            "hotplug_sim_jobs_waiting", "Jobs waiting for room on the host to start", registry=self.registry
        )
        self.memory = Gauge(
            "hotplug_sim_vm_memory_bytes",
            "Memory of each simulated VM: its size, what it uses, its page cache, and what it has swapped out",
            ["vm", "kind"],
            registry=self.registry,
        )
        self.memory_resizes = Counter(
            "hotplug_sim_memory_resizes", "Memory resize requests by outcome", ["outcome"], registry=self.registry
        )
        self.oom_kills = Counter(
            "hotplug_sim_oom_kills", "Jobs the simulated guests' OOM killers took", registry=self.registry
        )
        self.jobs_started = Counter("hotplug_sim_jobs_started", "Jobs started", registry=self.registry)
        self.jobs_finished = Counter("hotplug_sim_jobs_finished", "Jobs finished", registry=self.registry)
        self.jobs_rejected = Counter(
            "hotplug_sim_jobs_rejected", "Jobs larger than the host's whole capacity", registry=self.registry
        )


_encoder = msgspec.json.Encoder()
_hotplug_decoder = msgspec.json.Decoder(HotplugRequest)
_load_decoder = msgspec.json.Decoder(LoadRequest)
_memory_decoder = msgspec.json.Decoder(MemoryResizeRequest)
_MEMORY_KINDS = ("size", "used", "cache", "swap")
_MIN_WAIT_S = 1e-3


class SimulatorService:
    def __init__(self, ctx: ServiceContext[SimulatorMetrics], config: SimulatorConfig) -> None:
        self.ctx = ctx
        self.config = config
        self.metrics: SimulatorMetrics = ctx.metrics
        now = ctx.clock.now()
        # A trace's start plays at the run's start: the shared clock's epoch, which every service of a run (and
        # `hotplug up`) agrees on, so a trace's minute 10 is the run's minute 10 at any --speed.
        resident = scenario.resident_vms(config, ctx.clock.epoch if config.trace is not None else now, now)
        cores = scenario.host_cores(config, resident)
        capacity = scenario.capacity(config.host_rules, ctx.host, cores)
        jobs = scenario.arrivals(config)
        if config.arrivals_file is not None:
            jobs = iter(listed := list(jobs))
            for job in scenario.too_large(listed, capacity):
                log.warning(
                    "job %s asks for %d vCPUs, more than the host's capacity of %d: it will be rejected",
                    job.name,
                    job.requested_vcpus,
                    capacity,
                )
        self.host = Host(
            cores,
            capacity,
            jobs=jobs,
            resident=resident,
            origin=now,
            memory_capacity_bytes=scenario.memory_capacity(config),
            memory_bytes=config.host_memory_bytes,
            psi_trigger=config.psi_trigger,
        )
        self._exported = SimHost(cores=cores, capacity_vcpus=capacity)  # the counters' totals exported so far
        self._labelled: set[str] = set()  # the VMs the per-VM gauges have a series for
        self._tasks: set[asyncio.Task[None]] = set()
        # Set when the host was integrated: the stall timer takes its next moment again.
        self._integrated = asyncio.Event()

    def use_host_rules(self, rules: tuple[HostRule, ...]) -> str:
        """Take the [[host]] rules of a reloaded config file: the capacity follows them from now on."""
        self.host.capacity_vcpus = scenario.capacity(rules, self.ctx.host, self.host.cores)
        return f"host capacity {self.host.capacity_vcpus} vCPUs on {self.host.cores} cores"

    async def run(self) -> None:
        host = self.ctx.host
        await self.ctx.nc.subscribe(subjects.simulator(host, "stats"), cb=self._on_stats)
        await self.ctx.nc.subscribe(subjects.simulator(host, "hotplug"), cb=self._on_hotplug)
        await self.ctx.nc.subscribe(subjects.simulator(host, "load"), cb=self._on_load)
        await self.ctx.nc.subscribe(subjects.simulator(host, "memory"), cb=self._on_memory)
        await self.ctx.nc.subscribe(subjects.simulator(host, "jobs"), cb=self._on_jobs)
        await self.ctx.nc.flush()
        if self.config.psi_trigger is not None:
            task = asyncio.ensure_future(self._watch_stalls())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        model = self.host
        log.info(
            "simulator on host %s (%d cores, capacity %d vCPUs) with %d VMs: %s%s",
            host,
            model.cores,
            model.capacity_vcpus,
            len(model.vms),
            ", ".join(f"{vm.name}({vm.workload.profile},{vm.max_vcpus})" for vm in model.vms),
            "; jobs arrive " + self._arrivals_text() if self.config.has_arrivals else "",
        )
        while True:
            now = self.ctx.clock.now()
            await self._advance(now)  # jobs start and end though nobody asks
            self._export(now)
            await asyncio.sleep(1.0)

    async def _advance(self, now: float) -> None:
        """Integrate the host to ``now`` and say at once each PSI trigger that fired on the way."""
        host = self.host
        host.advance(now)
        fired = host.take_fired()
        if fired and host.psi_trigger is not None:
            stall_s, window_s = host.psi_trigger
            subject = subjects.simulator_pressure(self.ctx.host)
            for vm, at in fired:
                await self.ctx.nc.publish(
                    subject, _encoder.encode(SimPressure(vm=vm, time=at, stall_s=stall_s, window_s=window_s))
                )
        self._integrated.set()

    async def _watch_stalls(self) -> None:
        """Integrate the host when a trigger could next fire (``Host.next_stall_check``), waking early whenever a
        request integrated it meanwhile (a resize or a load may move that moment)."""
        clock = self.ctx.clock
        while True:
            self._integrated.clear()
            at = self.host.next_stall_check()
            if at is None:
                await self._integrated.wait()
                continue
            # At least a millisecond of the clock: a moment the wall conversion leaves a hair ahead must not spin.
            wait = max(at - clock.now(), _MIN_WAIT_S)
            try:
                await asyncio.wait_for(self._integrated.wait(), timeout=clock.wall_seconds(wait))
            except TimeoutError:
                await self._advance(clock.now())

    def _arrivals_text(self) -> str:
        if self.config.arrivals_file is not None:
            return f"from {self.config.arrivals_file}"
        return f"at {self.config.arrivals_rate:g} per hour"

    def _export(self, now: float) -> None:
        m = self.metrics
        running = set()
        for vm in self.host.vms:
            running.add(vm.name)
            m.vcpus.labels(vm.name).set(vm.online_vcpus)
            m.demand.labels(vm.name).set(vm.demand(now))
            memory = vm.counters(self.host.time).memory
            if memory is not None:
                for kind, value in zip(
                    _MEMORY_KINDS,
                    (memory.size_bytes, memory.used_bytes, memory.cache_bytes, memory.swap_bytes),
                    strict=True,
                ):
                    m.memory.labels(vm.name, kind).set(value)
        for gone in self._labelled - running:
            m.vcpus.remove(gone)
            m.demand.remove(gone)
            for kind in _MEMORY_KINDS:
                with contextlib.suppress(KeyError):  # a VM without memory had no series
                    m.memory.remove(gone, kind)
        self._labelled = running
        state, before = self.host.state(), self._exported
        m.host_cores.set(state.cores)
        m.host_capacity.set(state.capacity_vcpus)
        m.host_committed.set(state.committed_vcpus)
        m.jobs_waiting.set(state.waiting_vms)
        m.host_wait.inc(state.host_wait_core_seconds - before.host_wait_core_seconds)
        m.jobs_started.inc(state.jobs_started - before.jobs_started)
        m.jobs_finished.inc(state.jobs_finished - before.jobs_finished)
        m.jobs_rejected.inc(state.jobs_rejected - before.jobs_rejected)
        m.oom_kills.inc(state.oom_kills - before.oom_kills)
        self._exported = state

    async def _on_stats(self, msg: Msg) -> None:
        now = self.ctx.clock.now()
        await self._advance(now)
        reply = StatsReply(time=now, vms=self.host.counters(), host=self.host.state())
        await msg.respond(_encoder.encode(reply))

    async def _on_jobs(self, msg: Msg) -> None:
        now = self.ctx.clock.now()
        await self._advance(now)
        reply = JobsReply(time=now, origin=self.host.origin, host=self.host.state(), jobs=self.host.jobs())
        await msg.respond(_encoder.encode(reply))

    async def _on_hotplug(self, msg: Msg) -> None:
        try:
            request = _hotplug_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            self._count_bad("hotplug", exc)
            await msg.respond(_encoder.encode(HotplugReply(ok=False, error_code="unknown", error=str(exc))))
            return
        # Each operation waits out its delay in its own task, so VMs are resized in parallel.
        task = asyncio.ensure_future(self._hotplug(msg, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hotplug(self, msg: Msg, request: HotplugRequest) -> None:
        clock = self.ctx.clock
        try:
            vm = self.host.vm(request.vm)
            done_at = self.host.begin_hotplug(request.vm, request.op, clock.now(), self.config.hotplug_delay_s)
            with self.metrics.hotplugs_under_way.labels(request.op).track_inprogress():
                await clock.sleep(done_at - clock.now())
                # Integrated up to the vCPU's arrival first, so that a trigger firing before it is said now.
                await self._advance(clock.now())
                online = self.host.finish_resize(vm, clock.now())
                self._integrated.set()  # a VM's vCPUs changed: its trigger's moment with them
            reply = HotplugReply(ok=True, online_vcpus=online)
            self.metrics.hotplugs.labels(request.op, "ok").inc()
        except HotplugRefused as exc:
            reply = HotplugReply(ok=False, error_code=exc.code.value, error=str(exc))
            self.metrics.hotplugs.labels(request.op, exc.code.value).inc()
        await msg.respond(_encoder.encode(reply))

    async def _on_memory(self, msg: Msg) -> None:
        try:
            request = _memory_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            self._count_bad("memory", exc)
            await msg.respond(_encoder.encode(MemoryResizeReply(ok=False, error_code="unknown", error=str(exc))))
            return
        now = self.ctx.clock.now()
        try:
            done_at = self.host.begin_memory_resize(request.vm, request.target_bytes, now)
            memory = self.host.vm(request.vm).memory_device()
            reply = MemoryResizeReply(
                ok=True,
                size_bytes=memory.size_at(now),
                requested_bytes=memory.target_bytes,
                done_in_s=max(0.0, done_at - now),
            )
            self.metrics.memory_resizes.labels("ok").inc()
            log.info("memory of %s: %d bytes asked, there in %.2f s", request.vm, request.target_bytes, done_at - now)
        except HotplugRefused as exc:
            reply = MemoryResizeReply(ok=False, error_code=exc.code.value, error=str(exc))
            self.metrics.memory_resizes.labels(exc.code.value).inc()
        await msg.respond(_encoder.encode(reply))

    async def _on_load(self, msg: Msg) -> None:
        try:
            request = _load_decoder.decode(msg.data)
            vm = self.host.vm(request.vm)
        except (msgspec.DecodeError, HotplugRefused) as exc:
            self._count_bad("load", exc)
            await msg.respond(_encoder.encode(LoadReply(ok=False, error=str(exc))))
            return
        await self._advance(self.ctx.clock.now())
        vm.demand_override = request.demand_cores
        self._integrated.set()  # a new load may stall at once
        log.info(
            "load on %s set to %s",
            vm.name,
            "its workload" if request.demand_cores is None else f"{request.demand_cores} cores",
        )
        await msg.respond(_encoder.encode(LoadReply(ok=True)))

    def _count_bad(self, kind: str, exc: Exception) -> None:
        self.metrics.dropped.labels(self.metrics.service, kind, "malformed").inc()
        log.warning("bad %s request: %s", kind, exc)
