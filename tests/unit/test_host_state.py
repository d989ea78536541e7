"""The HostState a collector publishes, built from host readings and the ``[[host]]`` rules
(services/collector/hoststate.py), and the host readings of the simulator's stats (a pure function of its reply)."""

from __future__ import annotations

import msgspec
import pytest

from services.collector.hoststate import host_state, host_wait_cores
from services.collector.sources.base import HostReading, host_reader
from services.collector.sources.simulator import host_reading
from shared.config.schema import HostRule
from shared.messages import HostState, required_version
from shared.sim_api import SimHost, SimMemory, SimVmCounters, StatsReply
from shared.units import GIB, MAX_MEMORY_BYTES

RULES = (
    HostRule(match="gpu-*", cpus=64, reserve_cpus=2, overcommit=1.5, watermark=0.8),
    HostRule(match="node*", reserve_cpus=1),
)


def reading(t: float, vms: dict[str, int], wait: dict[str, float] | None = None, cpus: int = 8) -> HostReading:
    return HostReading(time=t, cpus=cpus, vms=vms, host_wait_seconds=wait)


def test_capacity_follows_the_hosts_rule_and_committed_every_running_vm() -> None:
    state = host_state(None, reading(10.0, {"a": 4, "b": 2}), host="node1", rules=RULES, used_cores=3.5, source="s")
    assert (state.cpus, state.capacity_vcpus, state.committed_vcpus, state.free_vcpus) == (8, 7, 6, 1)
    assert (state.time, state.host, state.used_cores, state.source, state.watermark) == (10.0, "node1", 3.5, "s", 1.0)
    assert state.host_wait_cores is None  # no reading before it: no interval yet
    # the rule's cpus replaces the source's; (64 - 2) x 1.5 = 93; its watermark travels with it
    gpu = host_state(None, reading(1.0, {"a": 100}), host="gpu-7", rules=RULES, used_cores=None, source="s")
    assert (gpu.cpus, gpu.capacity_vcpus, gpu.free_vcpus, gpu.watermark) == (64, 93, -7, 0.8)
    # a host no rule matches: the source's CPUs, no reserve, overcommit 1
    plain = host_state(None, reading(1.0, {}), host="other", rules=RULES, used_cores=0.0, source="s")
    assert (plain.capacity_vcpus, plain.committed_vcpus, plain.free_vcpus) == (8, 0, 8)


def test_the_same_reading_under_reloaded_rules_gives_the_new_capacity() -> None:
    now = reading(1.0, {"a": 4})
    before = host_state(None, now, host="node1", rules=RULES, used_cores=None, source="s")
    after = host_state(
        None, now, host="node1", rules=(HostRule(match="node1", overcommit=2.0),), used_cores=None, source="s"
    )
    assert (before.capacity_vcpus, after.capacity_vcpus) == (7, 16)


def test_host_wait_is_the_rate_of_each_counters_increase_over_the_interval() -> None:
    first = reading(10.0, {"a": 2}, {"a:1": 5.0, "a:2": 1.0, "b:9": 3.0})
    # a:1 waited 1 s more, a:2 restarted (a re-plugged vCPU: a new thread), b:9 vanished, c:4 appeared
    second = reading(12.0, {"a": 2}, {"a:1": 6.0, "a:2": 0.5, "c:4": 40.0})
    assert host_wait_cores(first, second) == pytest.approx(0.5)
    assert host_wait_cores(None, second) is None
    assert host_wait_cores(first, reading(12.0, {})) is None  # the source stopped knowing it
    assert host_wait_cores(second, second) is None  # no time passed
    state = host_state(first, second, host="h", rules=(), used_cores=1.0, source="s")
    assert state.host_wait_cores == pytest.approx(0.5)


def test_the_waiting_queue_travels_and_an_empty_queue_has_no_next() -> None:
    queued = HostReading(time=1.0, cpus=4, vms={}, waiting_vms=2, waiting_vcpus=6, next_waiting_vcpus=4)
    state = host_state(None, queued, host="h", rules=(), used_cores=None, source="s")
    assert (state.waiting_vms, state.waiting_vcpus, state.next_waiting_vcpus) == (2, 6, 4)
    empty = msgspec.structs.replace(queued, waiting_vms=0, waiting_vcpus=0)
    assert host_state(None, empty, host="h", rules=(), used_cores=None, source="s").next_waiting_vcpus is None


def test_whatever_the_source_reports_the_message_is_valid() -> None:
    wild = HostReading(
        time=1.0, cpus=10**9, vms={"a": 10**9, "b": -3}, host_wait_seconds={"x": 0.0}, waiting_vms=-1, waiting_vcpus=-5
    )
    later = msgspec.structs.replace(wild, time=1.001, host_wait_seconds={"x": 1e9})
    state = host_state(wild, later, host="h", rules=(), used_cores=1e9, source="s")
    checked = msgspec.json.decode(msgspec.json.encode(state), type=HostState)  # as a receiver decodes it
    assert (checked.cpus, checked.committed_vcpus, checked.used_cores, checked.host_wait_cores) == (
        65_536,
        1_048_576,
        4096.0,
        4096.0,
    )
    assert (checked.waiting_vms, checked.waiting_vcpus) == (0, 0)
    tiny = host_state(
        None,
        msgspec.structs.replace(wild, cpus=0, vms={"a": 2, "b": -3}),
        host="h",
        rules=(),
        used_cores=None,
        source="s",
    )
    assert (tiny.cpus, tiny.committed_vcpus) == (1, 2)  # a count below zero is no count


def vm(name: str, online: int, maximum: int) -> SimVmCounters:
    return SimVmCounters(
        vm=name,
        online_vcpus=online,
        min_vcpus=1,
        max_vcpus=maximum,
        cpu_seconds=0.0,
        per_vcpu_seconds=[],
        waiting_core_seconds=0.0,
        profile="batch",
    )


def test_the_simulators_host_is_its_cores_and_its_running_vms() -> None:
    host = SimHost(
        cores=16, capacity_vcpus=16, host_wait_core_seconds=7.5, waiting_vms=3, waiting_vcpus=10, next_waiting_vcpus=2
    )
    got = host_reading(StatsReply(time=5.0, vms=[vm("a", 2, 4), vm("b", 3, 8)], host=host))
    assert (got.time, got.cpus, dict(got.vms)) == (5.0, 16, {"a": 2, "b": 3})
    assert got.host_wait_seconds == {"host": 7.5}
    assert (got.waiting_vms, got.waiting_vcpus, got.next_waiting_vcpus) == (3, 10, 2)


def test_a_simulator_without_a_host_model_has_as_many_cores_as_its_vms_maximum() -> None:
    got = host_reading(StatsReply(time=5.0, vms=[vm("a", 2, 4), vm("b", 3, 8)]))
    assert (got.cpus, dict(got.vms), got.host_wait_seconds, got.waiting_vms) == (12, {"a": 2, "b": 3}, None, 0)
    assert host_reading(StatsReply(time=5.0, vms=[])).cpus == 1


class WithoutHost:
    name = "old"


class WithHost(WithoutHost):
    async def host(self) -> HostReading | None:
        return None


def test_a_source_without_a_host_reading_has_no_host_reader() -> None:
    assert host_reader(WithoutHost()) is None  # a plug-in written before host readings: it publishes no HostState
    assert host_reader(WithHost()) is not None


# -- memory -----------------------------------------------------------------------------------------------------------


def with_memory(vm_memory: dict[str, int], memory: int | None = 32 * GIB) -> HostReading:
    return HostReading(time=1.0, cpus=8, vms={"a": 2}, memory_bytes=memory, vm_memory=vm_memory)


def test_the_hosts_memory_capacity_and_committed_memory_follow_its_rule() -> None:
    rules = (HostRule(match="node*", reserve_memory="4GiB", memory_overcommit=1.5),)
    state = host_state(
        None, with_memory({"a": 8 * GIB, "b": 4 * GIB}), host="node1", rules=rules, used_cores=None, source="s"
    )
    assert (state.memory_bytes, state.capacity_memory_bytes, state.committed_memory_bytes) == (
        32 * GIB,
        42 * GIB,
        12 * GIB,
    )
    assert required_version(state) == 2
    # the rule's memory stands in for the source's; no rule: the source's, all of it
    named = host_state(
        None, with_memory({}), host="h", rules=(HostRule(match="h", memory="64GiB"),), used_cores=None, source="s"
    )
    assert (named.memory_bytes, named.capacity_memory_bytes, named.committed_memory_bytes) == (64 * GIB, 64 * GIB, 0)


def test_a_source_that_reports_no_memory_publishes_a_v1_host_state() -> None:
    rules = (HostRule(match="h", memory="64GiB"),)  # a rule alone cannot tell what the VMs hold
    state = host_state(None, reading(1.0, {"a": 2}), host="h", rules=rules, used_cores=None, source="s")
    assert (state.memory_bytes, state.capacity_memory_bytes, state.committed_memory_bytes) == (None, None, None)
    assert required_version(state) == 1


def test_memory_figures_stay_within_the_messages_bounds() -> None:
    huge = host_state(
        None,
        with_memory({"a": 2**62, "b": -5}, memory=2**62),
        host="h",
        rules=(HostRule(match="*", memory_overcommit=64),),
        used_cores=None,
        source="s",
    )
    assert huge.capacity_memory_bytes == huge.memory_bytes == huge.committed_memory_bytes == MAX_MEMORY_BYTES
    back = msgspec.json.decode(msgspec.json.encode(huge), type=HostState)
    assert back.committed_memory_bytes == MAX_MEMORY_BYTES


def test_the_simulators_host_memory_is_its_ram_and_each_vms_committed_memory() -> None:
    def with_mem(name: str, size: int, requested: int) -> SimVmCounters:
        memory = SimMemory(size_bytes=size, requested_bytes=requested, min_bytes=GIB, max_bytes=16 * GIB, step_bytes=1)
        return msgspec.structs.replace(vm(name, 2, 4), memory=memory)

    vms = [with_mem("a", 4 * GIB, 6 * GIB), with_mem("b", 4 * GIB, 2 * GIB), vm("c", 1, 2)]
    host = SimHost(cores=16, capacity_vcpus=16, memory_bytes=64 * GIB)
    got = host_reading(StatsReply(time=5.0, vms=vms, host=host))
    # a grow under way counts at its target, a shrink under way at its size; c has no memory model
    assert (got.memory_bytes, got.vm_memory) == (64 * GIB, {"a": 6 * GIB, "b": 4 * GIB})
    unlimited = host_reading(StatsReply(time=5.0, vms=vms, host=SimHost(cores=16, capacity_vcpus=16)))
    assert (unlimited.memory_bytes, unlimited.vm_memory) == (None, None)
