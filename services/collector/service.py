"""The collector service: every interval, read the source and publish one MetricSample per VM."""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Gauge, Histogram

from services.collector.rates import sample_from
from services.collector.sources.base import Reading, Source
from shared import subjects
from shared.codec import encode
from shared.runtime import ServiceContext
from shared.telemetry import ServiceMetrics

log = logging.getLogger(__name__)


class CollectorMetrics(ServiceMetrics):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.published = Counter(
            "hotplug_collector_samples_published", "Metric samples published", registry=self.registry
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


class Collector:
    def __init__(self, ctx: ServiceContext[CollectorMetrics], source: Source, interval_s: float = 1.0) -> None:
        if interval_s <= 0:
            raise ValueError("interval must be positive")
        self.ctx = ctx
        self.source = source
        self.interval_s = interval_s
        self.metrics: CollectorMetrics = ctx.metrics
        self._previous: dict[str, Reading] = {}

    async def run(self) -> None:
        clock = self.ctx.clock
        next_tick = clock.now()
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
            await self.source.close()

    async def collect_once(self) -> int:
        started = time.perf_counter()
        try:
            readings = await self.source.read()
        except Exception as exc:  # a source failure must not stop sampling; the VMs become "unknown"
            self.metrics.read_failures.labels(self.source.name).inc()
            log.warning("source %s failed: %s", self.source.name, exc)
            return 0
        published = 0
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
            await self.ctx.nc.publish(subjects.metrics(sample.host, sample.vm), encode(sample))
            self.metrics.online.labels(sample.host, sample.vm).set(sample.online_vcpus)
            self.metrics.used.labels(sample.host, sample.vm).set(sample.cpu_used_cores)
            if sample.pressure_cores is not None:
                self.metrics.pressure.labels(sample.host, sample.vm).set(sample.pressure_cores)
            published += 1
        for gone in set(self._previous) - seen:
            del self._previous[gone]
        self.metrics.published.inc(published)
        self.metrics.sampling.observe(time.perf_counter() - started)
        return published
