"""Counter deltas become a MetricSample: the one calculation every collector source relies on."""

from __future__ import annotations

import pytest

from services.collector.rates import sample_from
from services.collector.sources.base import Reading


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
