"""The collector service in this process (an asyncio task) against a real nats-server, reading a fake source that
plays a script: one sample per VM per read on the VM's metrics subject, counters turned into rates, a failed read
counted and survived, a VM that vanished no longer published.

The fake source keeps a clock of its own: read number ``n`` happens at time ``n``, so a sample's time says which
read made it, whatever the wall clock did. The collector publishes a read's samples in order on one connection, so
once the test has a sample of read ``n``, every sample of the reads before it has arrived: the tests wait for a
later read and then assert on the earlier ones, which is also how they show that something was *not* published.
A source that also reads its host has each round's HostState published on the host's subject, its capacity from
the ``[[host]]`` rules the collector holds. A pressure trigger brings an urgent round between the regular ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from hotplug.harness.poll import eventually
from hotplug.harness.recorder import Recorder
from services.collector.service import Collector, CollectorMetrics
from services.collector.sources.base import HostReading, PressureWatch, Reading
from services.collector.urgent import UrgentGate
from shared import subjects
from shared.codec import Decoder
from shared.config.schema import HostRule
from shared.messages import HostState, MetricSample
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


async def test_the_series_of_a_vm_the_source_no_longer_reports_end(nc: Client, start_collector: Start) -> None:
    """A job that ended or a VM stopped leaves no gauge behind showing its last vCPUs and load for ever."""
    everything = await watch(nc)
    collector, _ = await start_collector(lambda n: [web(n), db(n)] if n <= 3 else [web(n)])
    await past_read(everything, 6)

    def series(vm: str) -> set[str]:
        return {
            s.name
            for family in collector.ctx.metrics.registry.collect()
            for s in family.samples
            if s.labels.get("vm") == vm
        }

    assert series(DB) == set()
    assert series(WEB) >= {"hotplug_vm_online_vcpus", "hotplug_vm_cpu_used_cores", "hotplug_vm_pressure_cores"}


class HostSource(FakeSource):
    """A fake source that also reads its host: 8 CPUs, web's 2 vCPUs and db's 1 plus an unsampled VM's 3 (a VM
    the collector leaves alone still holds its vCPUs), one vCPU's worth of host wait a second, two jobs waiting;
    the host read of ``fail_host_at`` raises."""

    def __init__(self, script: Script, fail_host_at: int = 0) -> None:
        super().__init__(script)
        self.fail_host_at = fail_host_at

    async def host(self) -> HostReading | None:
        n = self.reads
        if n == self.fail_host_at:
            raise RuntimeError("node info unavailable")
        return HostReading(
            time=float(n),
            cpus=8,
            vms={WEB: 2, DB: 1, "unmanaged": 3},
            host_wait_seconds={"all": 1.0 * n},
            waiting_vms=2,
            waiting_vcpus=5,
            next_waiting_vcpus=4,
        )


async def watch_hosts(nc: Client) -> list[HostState]:
    """HostStates published on any host's subject from now on (each checked against its subject's host)."""
    heard: list[HostState] = []
    decoder = Decoder(HostState)

    async def on_state(msg: Msg) -> None:
        state = decoder.decode(msg.data)
        assert msg.subject == subjects.hosts(state.host)
        heard.append(state)

    await nc.subscribe(subjects.ALL_HOSTS, cb=on_state)
    await nc.flush()
    return heard


async def test_each_round_publishes_the_hosts_state_with_the_capacity_its_host_rule_gives(
    nc: Client, serve: Serve
) -> None:
    heard = await watch_hosts(nc)
    samples = await watch(nc)
    source = HostSource(lambda n: [web(n), db(n)], fail_host_at=4)
    rules = [HostRule(match="other"), HostRule(match="h*", reserve_cpus=1, overcommit=2.0, watermark=0.75)]
    collector_task: list[Collector] = []

    async def body(ctx: ServiceContext[CollectorMetrics]) -> None:
        collector_task.append(Collector(ctx, source, INTERVAL_S, host_rules=rules))
        await collector_task[0].run()

    collector = await serve(CollectorMetrics("collector"), body, HOST)
    await eventually(lambda: any(s.time >= 6 for s in heard), timeout=10, what="a HostState of read 6")

    # one HostState per round, the failed host read left out (and counted), the samples going on regardless
    assert [s.time for s in heard if s.time <= 6] == [1, 2, 3, 5, 6]
    await past_read(samples, 6)
    assert collector.count("hotplug_collector_read_failures_total", source="fake") == 1
    first, second = heard[0], heard[1]
    # (8 - 1) x 2 = 14 vCPUs of capacity; 6 committed, the unsampled VM's included
    assert (second.host, second.source, second.cpus, second.capacity_vcpus, second.watermark) == (
        HOST,
        "fake",
        8,
        14,
        0.75,
    )
    assert (second.committed_vcpus, second.free_vcpus) == (6, 8)
    assert (second.waiting_vms, second.waiting_vcpus, second.next_waiting_vcpus) == (2, 5, 4)
    # what needs an interval is unknown at the first round, then a rate: the VMs' samples' use, and host wait
    assert (first.used_cores, first.host_wait_cores) == (None, None)
    assert second.used_cores == pytest.approx(0.1 * 3 + 0.25)
    assert second.host_wait_cores == pytest.approx(1.0)
    later = next(s for s in heard if s.time == 5)  # against read 3, the last host read before the failed one
    assert later.host_wait_cores == pytest.approx(1.0)
    assert collector.count("hotplug_host_capacity_vcpus", host=HOST) == 14
    assert collector.count("hotplug_host_committed_vcpus", host=HOST) == 6
    assert collector.count("hotplug_host_free_vcpus", host=HOST) == 8
    assert collector.count("hotplug_host_waiting_vms", host=HOST) == 2
    assert collector.count("hotplug_host_wait_cores", host=HOST) == pytest.approx(1.0)

    # new rules (a SIGHUP's reload) set the capacity from the next round on
    assert "1 [[host]] rules" in collector_task[0].use_host_rules([HostRule(match=HOST, cpus=3)])
    await eventually(lambda: heard[-1].capacity_vcpus == 3, timeout=10, what="the reloaded rule's capacity")
    assert (heard[-1].cpus, heard[-1].free_vcpus) == (3, -3)


async def test_a_source_that_reads_no_host_publishes_no_host_state(nc: Client, start_collector: Start) -> None:
    heard = await watch_hosts(nc)
    samples = await watch(nc)
    collector, _ = await start_collector(lambda n: [web(n), db(n)])  # FakeSource: read() only, as old plug-ins
    await past_read(samples, 5)
    await nc.flush()
    assert heard == []
    assert collector.count("hotplug_host_capacity_vcpus", host=HOST) == 0
    assert "hotplug_host_capacity_vcpus" not in {
        s.name for family in collector.ctx.metrics.registry.collect() for s in family.samples
    }


async def test_a_pressure_trigger_brings_one_urgent_round_per_window_between_the_regular_ones(
    nc: Client, serve: Serve
) -> None:
    """An urgent round reads the source at once and marks its samples; within the gate's window a second firing is
    refused; the next regular round's interval runs from the urgent one, so the samples cover the time once each."""
    everything = await watch(nc)
    source = FakeSource(lambda n: [web(n), db(n)])
    made: list[Collector] = []

    async def body(ctx: ServiceContext[CollectorMetrics]) -> None:
        # Regular rounds an hour apart: after the first, every read here is one the test asked for.
        made.append(Collector(ctx, source, 3600.0, urgent=UrgentGate(3600.0, min_interval_s=0.0)))
        await made[0].run()

    collector = await serve(CollectorMetrics("collector"), body, HOST)
    await eventually(lambda: made and source.reads == 1, timeout=10, what="the first regular read")
    made[0].pressure_fired()
    await past_read(everything, 2)
    urgent = of(everything, WEB, 2)
    assert urgent.urgent and of(everything, DB, 2).urgent
    assert urgent.interval_s == 1.0  # from read 1, as any sample's
    assert urgent.cpu_used_cores == pytest.approx(0.1 * 3)

    made[0].pressure_fired()  # within the window
    await eventually(
        lambda: collector.count("hotplug_collector_urgent_rounds_total", outcome="refused") == 1,
        timeout=10,
        what="the second firing refused",
    )
    assert source.reads == 2
    assert collector.count("hotplug_collector_urgent_rounds_total", outcome="sent") == 1

    assert await made[0].collect_once() == 2
    await past_read(everything, 3)
    regular = of(everything, WEB, 3)
    assert not regular.urgent and regular.interval_s == 1.0  # from the urgent read, not the regular one before it


class WatchedSource(FakeSource):
    """A FakeSource with a watch for pressure (``watch_pressure``), which the test fires by hand; ``refuse``: the
    watch cannot start (as the agent's on a kernel without PSI)."""

    def __init__(self, script: Script, refuse: bool = False) -> None:
        super().__init__(script)
        self.refuse = refuse
        self.fired: Callable[[], None] | None = None
        self.watch_closed = False

    def watch_pressure(self, fired: Callable[[], None]) -> PressureWatch:
        if self.refuse:
            raise OSError("no PSI here")
        self.fired = fired
        return _Watch(self)


class _Watch:
    window_s = 3600.0  # one urgent round, then every firing within the test is refused

    def __init__(self, source: WatchedSource) -> None:
        self.source = source

    def close(self) -> None:
        self.source.watch_closed = True


async def test_a_source_that_watches_for_pressure_brings_urgent_rounds_and_its_watch_ends_with_the_collector(
    nc: Client, serve: Serve
) -> None:
    """``watch_pressure``: the collector starts the source's watch, serves its firings with urgent rounds gated to the
    watch's window, and closes the watch when it stops."""
    everything = await watch(nc)
    source = WatchedSource(lambda n: [web(n), db(n)])
    made: list[Collector] = []

    async def body(ctx: ServiceContext[CollectorMetrics]) -> None:
        made.append(Collector(ctx, source, 3600.0, watch_pressure=True))
        await made[0].run()

    collector = await serve(CollectorMetrics("collector"), body, HOST)
    await eventually(lambda: source.reads == 1 and source.fired is not None, timeout=10, what="the watch started")
    gate = made[0].urgent
    assert gate is not None and gate.window_s == 3600.0
    assert source.fired is not None
    source.fired()
    await past_read(everything, 2)
    assert of(everything, WEB, 2).urgent
    source.fired()  # within the watch's window
    await eventually(
        lambda: collector.count("hotplug_collector_urgent_rounds_total", outcome="refused") == 1,
        timeout=10,
        what="the second firing refused",
    )
    await collector.stop()
    assert source.watch_closed and source.closed


async def test_a_source_without_a_watch_has_a_rise_followed_up_by_an_urgent_round(nc: Client, serve: Serve) -> None:
    """Asked to watch a source that cannot (a host-side one), the collector follows rises: the regular sample that
    first shows a VM's load step brings an urgent round a quarter interval later, which sees the step whole; once
    the use holds, the rounds are regular again."""
    everything = await watch(nc)

    def stepping(n: int) -> list[Reading]:
        busy = 0.1 * n if n <= 3 else 0.3 + 2.0 * (n - 3)  # idle, then both vCPUs busy from read 4 on
        return [Reading(vm=WEB, time=float(n), online_vcpus=2, min_vcpus=1, max_vcpus=4, cpu_seconds=busy)]

    source = FakeSource(stepping)
    made: list[Collector] = []

    async def body(ctx: ServiceContext[CollectorMetrics]) -> None:
        made.append(Collector(ctx, source, 0.4, watch_pressure=True))
        await made[0].run()

    collector = await serve(CollectorMetrics("collector"), body, HOST)
    await past_read(everything, 6)
    assert [of(everything, WEB, n).urgent for n in range(2, 7)] == [False, False, False, True, False]
    assert of(everything, WEB, 4).cpu_used_cores == pytest.approx(2.0)  # the rise, a regular sample
    gate = made[0].urgent
    assert gate is not None and gate.window_s == pytest.approx(0.1)
    assert collector.count("hotplug_collector_urgent_rounds_total", outcome="sent") == 1
    await collector.stop()


@pytest.mark.parametrize("refuse", [True, False])
async def test_without_a_watch_the_collector_keeps_its_regular_rounds(nc: Client, serve: Serve, refuse: bool) -> None:
    """A watch that cannot start (refused), or one not asked for (``watch_pressure`` off, as ``--no-urgent``): no
    gate, no urgent round, and the regular rounds go on."""
    everything = await watch(nc)
    source = WatchedSource(lambda n: [web(n), db(n)], refuse=refuse)

    async def body(ctx: ServiceContext[CollectorMetrics]) -> None:
        await Collector(ctx, source, INTERVAL_S, watch_pressure=refuse).run()

    collector = await serve(CollectorMetrics("collector"), body, HOST)
    await past_read(everything, 3)
    assert source.fired is None
    assert not any(s.urgent for s in everything.samples)
    await collector.stop()
