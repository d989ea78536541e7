"""The collector service in this process (an asyncio task) against a real nats-server, reading a fake source that
plays a script: one sample per VM per read on the VM's metrics subject, counters turned into rates, a failed read
counted and survived, a VM that vanished no longer published.

The fake source keeps a clock of its own: read number ``n`` happens at time ``n``, so a sample's time says which
read made it, whatever the wall clock did. The collector publishes a read's samples in order on one connection, so
once the test has a sample of read ``n``, every sample of the reads before it has arrived: the tests wait for a
later read and then assert on the earlier ones, which is also how they show that something was *not* published.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client

from hotplug.harness.poll import eventually
from hotplug.harness.recorder import Recorder
from services.collector.service import Collector, CollectorMetrics
from services.collector.sources.base import Reading
from shared import subjects
from shared.messages import MetricSample
from shared.runtime import ServiceContext
from tests.component.conftest import InProcess, Serve

HOST = "h1"
# A name NATS gives meaning to ('.' separates tokens): it must travel escaped in the subject, whole in the body.
WEB = "web.01"
DB = "db"
INTERVAL_S = 0.02  # fast rounds: the test waits on reads, not on time

Script = Callable[[int], list[Reading]]


class FakeSource:
    """A collector source playing ``script``: read ``n`` (from 1) returns ``script(n)``, or raises what it raises."""

    name = "fake"

    def __init__(self, script: Script) -> None:
        self.script = script
        self.reads = 0
        self.closed = False

    async def read(self) -> list[Reading]:
        self.reads += 1
        return self.script(self.reads)

    async def close(self) -> None:
        self.closed = True


def web(n: int) -> Reading:
    """A VM under rising load: 0.1·n² busy core-seconds by time n, so 0.1·(2n-1) cores over the interval (n-1, n]
    (an average since the start would be 0.1·n: the two tell a rate from a counter); 0.5 cores waiting throughout;
    its two vCPUs busy 0.5 and 0.25 of the time."""
    return Reading(
        vm=WEB,
        time=float(n),
        online_vcpus=2,
        min_vcpus=1,
        max_vcpus=4,
        cpu_seconds=0.1 * n * n,
        per_vcpu_seconds={"0": 0.5 * n, "1": 0.25 * n},
        waiting_core_seconds=0.5 * n,
    )


def db(n: int, since: int = 0) -> Reading:
    """A steady VM, a quarter of a core busy since it (re)started at time ``since``."""
    return Reading(vm=DB, time=float(n), online_vcpus=1, min_vcpus=1, max_vcpus=2, cpu_seconds=0.25 * (n - since))


Start = Callable[[Script], Awaitable[tuple[InProcess[CollectorMetrics], FakeSource]]]


@pytest.fixture
def start_collector(serve: Serve) -> Start:
    async def start(script: Script) -> tuple[InProcess[CollectorMetrics], FakeSource]:
        source = FakeSource(script)

        async def body(ctx: ServiceContext[CollectorMetrics]) -> None:
            await Collector(ctx, source, INTERVAL_S).run()

        return await serve(CollectorMetrics("collector"), body, HOST), source

    return start


async def watch(nc: Client, subject: str = subjects.ALL_METRICS) -> Recorder:
    """Samples published on ``subject`` from now on."""
    recorder = Recorder()
    await recorder.attach(nc, commands=False, results=False, metrics_subject=subject)
    return recorder


async def past_read(recorder: Recorder, n: int) -> None:
    """Wait until a sample of read ``n`` or later arrived: every sample of the reads before ``n`` is in."""
    await eventually(lambda: any(s.time >= n for s in recorder.samples), timeout=10, what=f"a sample of read {n}")


def times(recorder: Recorder, vm: str, up_to: int) -> list[float]:
    return [s.time for s in recorder.samples if s.vm == vm and s.time <= up_to]


def of(recorder: Recorder, vm: str, n: int) -> MetricSample:
    [sample] = [s for s in recorder.samples if s.vm == vm and s.time == n]
    return sample


async def test_each_read_publishes_one_sample_per_vm_on_its_subject_as_rates_over_the_interval(
    nc: Client, start_collector: Start
) -> None:
    everything = await watch(nc)
    per_vm = {vm: await watch(nc, subjects.metrics(HOST, vm)) for vm in (WEB, DB)}
    collector, source = await start_collector(lambda n: [web(n), db(n)])
    await past_read(everything, 7)

    # A rate needs two readings: nothing of the first read, then one sample per VM per read, each on its own
    # VM's subject (a VM's recorder hears that subject only) and nowhere else.
    for vm, heard in per_vm.items():
        assert times(heard, vm, 6) == [2, 3, 4, 5, 6], vm
        assert {s.vm for s in heard.samples} == {vm}
    assert len([s for s in everything.samples if s.time <= 6]) == 10

    # Counters become rates over the interval between two consecutive readings (services/collector/rates.py).
    for n in (2, 6):
        sample = of(everything, WEB, n)
        assert (sample.host, sample.source, sample.interval_s) == (HOST, "fake", 1.0)
        assert (sample.online_vcpus, sample.min_vcpus, sample.max_vcpus) == (2, 1, 4)
        assert sample.cpu_used_cores == pytest.approx(0.1 * (2 * n - 1))
        assert sample.pressure_cores == pytest.approx(0.5)
        assert sample.per_vcpu_busy == pytest.approx([0.5, 0.25])
    steady = of(everything, DB, 4)
    assert steady.cpu_used_cores == pytest.approx(0.25)
    # what the source cannot tell stays unknown, not zero
    assert (steady.pressure_cores, steady.per_vcpu_busy, steady.psi_some) == (None, None, None)

    assert collector.count("hotplug_collector_samples_published_total") >= 10
    assert collector.count("hotplug_collector_read_failures_total") == 0
    assert collector.count("hotplug_vm_online_vcpus", host=HOST, vm=WEB) == 2
    await collector.stop()
    assert source.closed


async def test_a_failed_read_is_counted_and_the_next_sample_spans_the_gap(nc: Client, start_collector: Start) -> None:
    def script(n: int) -> list[Reading]:
        if n == 3:
            raise RuntimeError("hypervisor busy")
        return [web(n), db(n)]

    everything = await watch(nc)
    collector, _ = await start_collector(script)
    await past_read(everything, 6)
    assert collector.count("hotplug_collector_read_failures_total", source="fake") == 1
    assert not collector.task.done()
    # Read 3 published nothing; read 4 is taken against read 2, the last good one, over the two seconds between.
    assert times(everything, DB, 5) == [2, 4, 5]
    gap = of(everything, DB, 4)
    assert gap.interval_s == 2.0
    assert gap.cpu_used_cores == pytest.approx(0.25)
    assert of(everything, WEB, 4).cpu_used_cores == pytest.approx((0.1 * 16 - 0.1 * 4) / 2)


async def test_a_vm_that_vanishes_is_no_longer_published_and_on_return_starts_from_fresh_counters(
    nc: Client, start_collector: Start
) -> None:
    def script(n: int) -> list[Reading]:
        # db is seen at reads 1 to 3, gone at 4 and 5, back at 6 as a restarted VM: its counters start over.
        if n <= 3:
            return [web(n), db(n)]
        if n <= 5:
            return [web(n)]
        return [web(n), db(n, since=5)]

    everything = await watch(nc)
    await start_collector(script)
    await past_read(everything, 9)
    # Nothing while it is gone; nothing at its first read back either: the reading before it vanished is forgotten,
    # so the restart's smaller counter is never taken against it.
    assert times(everything, DB, 8) == [2, 3, 7, 8]
    assert of(everything, DB, 7).cpu_used_cores == pytest.approx(0.25)
    assert times(everything, WEB, 8) == [2, 3, 4, 5, 6, 7, 8]
