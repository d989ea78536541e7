"""The simulator service: a MiniCloud on the bus, answering the requests of ``shared.sim_api``."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import msgspec
from nats.aio.msg import Msg
from prometheus_client import Counter, Gauge

from services.simulator.cloud import HotplugRefused, MiniCloud, load_trace
from shared import subjects
from shared.runtime import ServiceContext
from shared.sim_api import HotplugReply, HotplugRequest, LoadReply, LoadRequest, StatsReply
from shared.telemetry import ServiceMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulatorConfig:
    vms: int = 6
    seed: int = 1
    hotplug_delay_s: float = 0.3
    profiles: tuple[str, ...] = ()
    max_vcpus: int | None = None
    # A replay CSV: one VM per trace VM, its demand following the recording (instead of the seeded profiles).
    trace: Path | None = None
    # With a trace: keep only the first this many of its VMs (by name); None keeps them all.
    trace_vms: int | None = None


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


_encoder = msgspec.json.Encoder()
_hotplug_decoder = msgspec.json.Decoder(HotplugRequest)
_load_decoder = msgspec.json.Decoder(LoadRequest)


class SimulatorService:
    def __init__(self, ctx: ServiceContext[SimulatorMetrics], config: SimulatorConfig) -> None:
        self.ctx = ctx
        self.config = config
        self.metrics: SimulatorMetrics = ctx.metrics
        if config.trace is not None:
            series = sorted(load_trace(config.trace), key=lambda s: s.name)[: config.trace_vms]
            # The trace's start plays at the run's start: the shared clock's epoch, which every service of a run
            # (and `hotplug up`) agrees on, so a trace's minute 10 is the run's minute 10 at any --speed.
            self.cloud = MiniCloud.from_trace(series, ctx.clock.epoch, ctx.clock.now())
        else:
            self.cloud = MiniCloud.generate(
                config.vms, config.seed, ctx.clock.now(), list(config.profiles) or None, config.max_vcpus
            )
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        host = self.ctx.host
        await self.ctx.nc.subscribe(subjects.simulator(host, "stats"), cb=self._on_stats)
        await self.ctx.nc.subscribe(subjects.simulator(host, "hotplug"), cb=self._on_hotplug)
        await self.ctx.nc.subscribe(subjects.simulator(host, "load"), cb=self._on_load)
        await self.ctx.nc.flush()
        log.info(
            "simulator on host %s with %d VMs: %s",
            host,
            len(self.cloud.vms),
            ", ".join(f"{vm.name}({vm.workload.profile},{vm.max_vcpus})" for vm in self.cloud.vms.values()),
        )
        while True:
            now = self.ctx.clock.now()
            for vm in self.cloud.vms.values():
                self.metrics.vcpus.labels(vm.name).set(vm.online_vcpus)
                self.metrics.demand.labels(vm.name).set(vm.demand(now))
            await asyncio.sleep(1.0)

    async def _on_stats(self, msg: Msg) -> None:
        now = self.ctx.clock.now()
        await msg.respond(_encoder.encode(StatsReply(time=now, vms=self.cloud.snapshot(now))))

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
            vm = self.cloud.get(request.vm)
            done_at = vm.begin_hotplug(request.op, clock.now(), self.config.hotplug_delay_s)
            with self.metrics.hotplugs_under_way.labels(request.op).track_inprogress():
                await clock.sleep(done_at - clock.now())
                online = vm.finish_hotplug(request.op, clock.now())
            reply = HotplugReply(ok=True, online_vcpus=online)
            self.metrics.hotplugs.labels(request.op, "ok").inc()
        except HotplugRefused as exc:
            reply = HotplugReply(ok=False, error_code=exc.code.value, error=str(exc))
            self.metrics.hotplugs.labels(request.op, exc.code.value).inc()
        await msg.respond(_encoder.encode(reply))

    async def _on_load(self, msg: Msg) -> None:
        try:
            request = _load_decoder.decode(msg.data)
            vm = self.cloud.get(request.vm)
        except (msgspec.DecodeError, HotplugRefused) as exc:
            self._count_bad("load", exc)
            await msg.respond(_encoder.encode(LoadReply(ok=False, error=str(exc))))
            return
        vm.advance(self.ctx.clock.now())
        vm.demand_override = request.demand_cores
        log.info(
            "load on %s set to %s",
            vm.name,
            "its workload" if request.demand_cores is None else f"{request.demand_cores} cores",
        )
        await msg.respond(_encoder.encode(LoadReply(ok=True)))

    def _count_bad(self, kind: str, exc: Exception) -> None:
        self.metrics.dropped.labels(self.metrics.service, kind, "malformed").inc()
        log.warning("bad %s request: %s", kind, exc)
