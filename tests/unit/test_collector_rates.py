"""Counter deltas become a MetricSample: the one calculation every collector source relies on."""

from __future__ import annotations

import msgspec
import pytest

from services.collector.rates import sample_from
from services.collector.sources.base import MemoryCounters, Reading


def reading(t: float, cpu: float, per: dict[str, float] | None = None, wait: float | None = None) -> Reading:
    return Reading(
        vm="v",
        time=t,
        online_vcpus=2,
        min_vcpus=1,
        max_vcpus=4,
        cpu_seconds=cpu,
        per_vcpu_seconds=per,
        waiting_core_seconds=wait,
    )


def test_rates_from_counter_deltas() -> None:
    s = sample_from(reading(10, 5, {"a": 1, "b": 4}, 2), reading(12, 8, {"a": 2.5, "b": 4.5}, 3), "h", "src")
    assert s is not None
    assert s.cpu_used_cores == pytest.approx(1.5)
    assert s.per_vcpu_busy == pytest.approx([0.75, 0.25])
    assert s.pressure_cores == pytest.approx(0.5)
    assert s.interval_s == pytest.approx(2)
    assert (s.host, s.vm, s.source, s.online_vcpus) == ("h", "v", "src", 2)


def test_no_sample_without_a_forward_interval() -> None:
    assert sample_from(reading(10, 5), reading(10, 6), "h", "s") is None
    assert sample_from(reading(10, 5), reading(9, 6), "h", "s") is None


def test_counter_reset_and_vanished_threads_do_not_produce_nonsense() -> None:
    s = sample_from(reading(0, 100, {"a": 50, "gone": 1}), reading(1, 10, {"a": 49, "new": 3}), "h", "s")
    assert s is not None
    assert s.cpu_used_cores == 0.0
    assert s.per_vcpu_busy == [0.0]  # only threads present in both readings
    assert s.pressure_cores is None  # unknown stays unknown


def _with_memory(r: Reading, memory: MemoryCounters | None) -> Reading:
    return msgspec.structs.replace(r, memory=memory)


def test_memory_sizes_pass_through_and_its_counters_become_rates() -> None:
    gib = 1024**3
    before = MemoryCounters(size_bytes=4 * gib, min_bytes=gib, max_bytes=8 * gib, swap_in_bytes=1e6, psi_some_seconds=3)
    after = MemoryCounters(
        size_bytes=6 * gib,
        min_bytes=gib,
        max_bytes=8 * gib,
        used_bytes=2 * gib,
        available_bytes=4 * gib,
        swap_in_bytes=5e6,
        psi_some_seconds=3.5,
        oom_kills=1,
    )
    s = sample_from(_with_memory(reading(10, 5), before), _with_memory(reading(12, 6), after), "h", "src")
    assert s is not None and s.memory is not None
    assert (s.memory.size_bytes, s.memory.used_bytes, s.memory.available_bytes) == (6 * gib, 2 * gib, 4 * gib)
    assert s.memory.swap_in_bytes_per_s == pytest.approx(2e6)
    assert s.memory.psi_some == pytest.approx(0.25)
    assert s.memory.oom_kills == 1


def test_memory_counters_that_go_back_give_no_rate_and_the_first_reading_gives_sizes() -> None:
    gib = 1024**3
    high = MemoryCounters(size_bytes=gib, min_bytes=gib, max_bytes=gib, swap_in_bytes=9e9, psi_some_seconds=100)
    low = MemoryCounters(size_bytes=gib, min_bytes=gib, max_bytes=gib, swap_in_bytes=0, psi_some_seconds=0)
    s = sample_from(_with_memory(reading(0, 0), high), _with_memory(reading(1, 0), low), "h", "s")
    assert s is not None and s.memory is not None
    assert s.memory.swap_in_bytes_per_s is None and s.memory.psi_some is None
    first = sample_from(reading(0, 0), _with_memory(reading(1, 0), low), "h", "s")
    assert first is not None and first.memory is not None and first.memory.size_bytes == gib
    assert first.memory.swap_in_bytes_per_s is None
