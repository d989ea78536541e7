"""The pure part of urgent samples: a PSI trigger's text, its fall-back for an unprivileged agent, and the gate that
lets at most one urgent sample out per trigger window."""

from __future__ import annotations

import math

import pytest

from services.collector.urgent import MIN_INTERVAL_S, TriggerSpec, UrgentGate, follow_up_s, rose


def test_the_trigger_text_is_in_microseconds_and_its_payload_ends_in_a_nul() -> None:
    spec = TriggerSpec(0.1, 1.0)
    assert spec.text() == "some 100000 1000000"
    # the kernel overwrites the last byte written with a NUL: without one the window would lose its last digit
    assert spec.payload() == b"some 100000 1000000\0"
    assert TriggerSpec(0.15, 2.5).text() == "some 150000 2500000"


@pytest.mark.parametrize(
    ("stall", "window", "says"),
    [
        (0.1, 0.4, "window must be from 0.5 to 10 s"),
        (0.1, 10.5, "window must be from 0.5 to 10 s"),
        (0.0, 1.0, "more than 0"),
        (1.5, 1.0, "at most its window"),
        (math.nan, 1.0, "more than 0"),
        (0.1, math.nan, "window must be"),
    ],
)
def test_a_trigger_the_kernel_would_refuse_is_refused_here(stall: float, window: float, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        TriggerSpec(stall, window)


def test_the_unprivileged_trigger_rounds_the_window_up_to_two_seconds_and_keeps_the_share() -> None:
    fallback = TriggerSpec(0.1, 1.0).unprivileged()
    assert fallback is not None and fallback.text() == "some 200000 2000000"
    wider = TriggerSpec(0.3, 3.0).unprivileged()
    assert wider is not None and wider.text() == "some 400000 4000000"
    assert TriggerSpec(0.1, 2.0).unprivileged() is None  # already one an unprivileged agent may set
    assert TriggerSpec(0.1, 10.0).unprivileged() is None
    longest = TriggerSpec(0.95, 9.5).unprivileged()
    assert longest is not None and longest.text() == "some 1000000 10000000"  # 10 s, the longest window


def test_one_urgent_sample_per_window() -> None:
    gate = UrgentGate(1.0)
    assert gate.delay(now=100.0, last_sample=99.5) == 0.0
    gate.sent(100.0)
    assert gate.delay(now=100.2, last_sample=100.0) is None
    assert gate.delay(now=100.999, last_sample=100.0) is None
    assert gate.delay(now=101.0, last_sample=100.5) == 0.0  # a window after the last one: allowed again


def test_an_urgent_sample_waits_until_its_interval_is_long_enough_to_measure() -> None:
    gate = UrgentGate(1.0)
    assert gate.delay(now=100.02, last_sample=100.0) == pytest.approx(MIN_INTERVAL_S - 0.02)
    assert gate.delay(now=100.0, last_sample=100.0) == pytest.approx(MIN_INTERVAL_S)
    assert UrgentGate(1.0, min_interval_s=0.0).delay(now=100.0, last_sample=100.0) == 0.0


def test_a_gate_needs_a_window() -> None:
    with pytest.raises(ValueError, match="positive window"):
        UrgentGate(0.0)


def test_a_rise_of_a_quarter_of_the_vcpus_is_followed_up_a_quarter_interval_later() -> None:
    assert rose(0.1, 0.36, 1)  # a quarter core more on 1 vCPU
    assert not rose(0.1, 0.3, 1)
    assert rose(1.0, 3.0, 8) and not rose(1.0, 2.9, 8)  # 2 cores more on 8
    assert not rose(None, 4.0, 4)  # no sample before: nothing rose
    assert not rose(3.0, 1.0, 4)  # a fall is not followed
    assert follow_up_s(1.0) == 0.25
    assert follow_up_s(0.2) == MIN_INTERVAL_S  # never sooner than an interval measures
