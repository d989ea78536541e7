"""The memory rule (services.decider.memory): grows at once, shrinks slowly on a window's evidence, never below the
window's peak plus the headroom, never while the guest swaps or is under pressure; and its window maximum."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.decider.memory import (
    MemoryObservation,
    MemoryPolicy,
    MemorySettings,
    MemorySettingsError,
    MemoryState,
    memory_settings,
)
from services.decider.memory.policy import WINDOW_BUCKETS
from services.decider.memory.window import WindowMax
from shared.units import GIB, MIB, align_up

STEP = 2 * MIB
DEFAULTS = MemorySettings()


def obs(time: float, size: int, used: int | None, **kw: object) -> MemoryObservation:
    fields: dict[str, object] = {"min_bytes": 256 * MIB, "max_bytes": 64 * GIB, **kw}
    return MemoryObservation(time=time, size_bytes=size, used_bytes=used, **fields)  # type: ignore[arg-type]


def wanted(used: int, s: MemorySettings = DEFAULTS) -> int:
    return align_up(math.ceil(used * (1 + s.headroom) + s.floor_bytes), STEP)


def calm(policy: MemoryPolicy, size: int, used: int, until: float, step_s: float = 300.0) -> MemoryState:
    """A state fed ``used`` every ``step_s`` from 0 to ``until`` (inclusive) at ``size``, with no decision made."""
    state = policy.new_state()
    t = 0.0
    while t <= until:
        assert policy.decide(state, obs(t, size, used)) is None, t
        t += step_s
    return state


def test_a_thin_margin_grows_at_once_in_one_step_to_used_plus_headroom() -> None:
    policy = MemoryPolicy()
    decision = policy.decide(policy.new_state(), obs(0, 1 * GIB, 1000 * MIB))
    assert decision is not None
    assert decision.kind == "margin"
    assert decision.target_bytes == wanted(1000 * MIB) == align_up(int(1000 * MIB * 1.25) + 128 * MIB, STEP)


def test_a_margin_above_the_trigger_holds() -> None:
    policy = MemoryPolicy()
    # spare 900 MiB against the 100 × 0.25 + 128 = 153 MiB the headroom asks for
    assert policy.decide(policy.new_state(), obs(0, 1 * GIB, 100 * MIB)) is None


@pytest.mark.parametrize(
    ("extra", "kind"), [({"psi_some": 0.4}, "pressure"), ({"swap_in_bytes_per_s": 200_000.0}, "swapping")]
)
def test_pressure_or_swapping_grows_at_once_even_with_a_wide_margin(extra: dict[str, float], kind: str) -> None:
    policy = MemoryPolicy()
    decision = policy.decide(policy.new_state(), obs(0, 2 * GIB, 100 * MIB, **extra))
    assert decision is not None
    assert decision.kind == kind
    assert decision.target_bytes == 4 * GIB  # pressure_grow 1: double


def test_swapping_adds_the_pages_swapped_in_over_the_interval() -> None:
    policy = MemoryPolicy()
    rate = 2 * GIB / 300  # 2 GiB did not fit over a 300-s interval
    decision = policy.decide(policy.new_state(), obs(0, 1 * GIB, 1 * GIB, swap_in_bytes_per_s=rate, interval_s=300.0))
    assert decision is not None
    assert decision.target_bytes == wanted(3 * GIB)


def test_signals_below_their_thresholds_are_not_pressure() -> None:
    policy = MemoryPolicy()
    assert policy.decide(policy.new_state(), obs(0, 2 * GIB, 100 * MIB, psi_some=0.05)) is None
    assert policy.decide(policy.new_state(), obs(0, 2 * GIB, 100 * MIB, swap_in_bytes_per_s=4096.0)) is None


def test_available_raises_used_when_it_says_more_is_taken() -> None:
    policy = MemoryPolicy()
    decision = policy.decide(policy.new_state(), obs(0, 1 * GIB, 100 * MIB, available_bytes=24 * MIB))
    assert decision is not None
    assert decision.target_bytes == wanted(1000 * MIB)


def test_no_shrink_before_a_whole_window_of_evidence() -> None:
    policy = MemoryPolicy(MemorySettings(window_samples=12))
    state = calm(policy, 16 * GIB, 100 * MIB, until=3300)
    decision = policy.decide(state, obs(3600, 16 * GIB, 100 * MIB))
    assert decision is not None
    assert decision.kind == "shrink"


def test_a_shrink_is_bounded_to_a_share_of_the_size_and_spaced_by_the_interval() -> None:
    s = MemorySettings(window_samples=12, shrink_interval_s=1800, max_shrink_fraction=0.25)
    policy = MemoryPolicy(s)
    state = calm(policy, 16 * GIB, 100 * MIB, until=3300)
    first = policy.decide(state, obs(3600, 16 * GIB, 100 * MIB))
    assert first is not None
    assert first.target_bytes == 12 * GIB
    for t in range(3900, 5400, 300):  # within the interval: hold
        assert policy.decide(state, obs(t, 12 * GIB, 100 * MIB)) is None
    second = policy.decide(state, obs(5400, 12 * GIB, 100 * MIB))
    assert second is not None
    assert second.target_bytes == 9 * GIB


def test_a_shrink_never_goes_below_the_windows_peak_plus_headroom() -> None:
    s = MemorySettings(window_samples=12, max_shrink_fraction=1.0)
    policy = MemoryPolicy(s)
    state = policy.new_state()
    assert policy.decide(state, obs(0, 16 * GIB, 3 * GIB)) is None  # the peak, 3 GiB, then little
    for t in range(300, 3600, 300):
        assert policy.decide(state, obs(t, 16 * GIB, 100 * MIB)) is None
    decision = policy.decide(state, obs(3600, 16 * GIB, 100 * MIB))
    assert decision is not None
    assert decision.target_bytes == wanted(3 * GIB)


def test_the_peak_leaves_the_window_after_window_samples() -> None:
    s = MemorySettings(window_samples=12, max_shrink_fraction=1.0, shrink_interval_s=0)
    policy = MemoryPolicy(s)
    state = policy.new_state()
    policy.decide(state, obs(0, 16 * GIB, 3 * GIB))
    for t in range(300, 3900, 300):
        policy.decide(state, obs(t, 16 * GIB, 200 * MIB))
    decision = policy.decide(state, obs(3900, wanted(3 * GIB), 200 * MIB))
    assert decision is not None
    assert decision.target_bytes == wanted(200 * MIB)


def test_a_shrink_keeps_room_for_the_largest_rise_from_one_sample_to_the_next() -> None:
    # A burst that came faster than a sample shows it (1 GiB -> 5 GiB between two samples) and went: once the burst
    # has left the window, a shrink still keeps 4 GiB spare above what is used now, so the next one finds its memory.
    s = MemorySettings(window_samples=2, shrink_interval_s=0, max_shrink_fraction=1.0)
    policy = MemoryPolicy(s)
    state = policy.new_state()
    size, targets = 16 * GIB, []
    for t, used in ((0, 1 * GIB), (300, 5 * GIB), (600, 1 * GIB), (900, 1 * GIB), (1200, 1 * GIB), (1500, 1 * GIB)):
        decision = policy.decide(state, obs(t, size, used))
        if decision is not None:
            assert decision.kind == "shrink"
            size = decision.target_bytes
            targets.append((t, size))
    # first to the window's peak with its headroom; once the peak has left the window, to used + the rise
    assert targets == [(600, wanted(5 * GIB)), (1200, align_up(5 * GIB, STEP))]
    # A rule that remembered no rise would have gone to the headroom's size, far less.
    assert wanted(1 * GIB) < 2 * GIB


def test_a_spare_below_the_largest_rise_grows_though_it_is_above_half_of_it() -> None:
    # A 4 GiB rise between two samples leaves 3 GiB spare: more than half the rise (the headroom's trigger), less
    # than the whole. The next sample may bring 4 GiB more (a burst longer than a sample), so the rule grows now.
    policy = MemoryPolicy()
    state = policy.new_state()
    assert policy.decide(state, obs(0, 8 * GIB, 1 * GIB)) is None
    grow = policy.decide(state, obs(1, 8 * GIB, 5 * GIB))
    assert grow is not None
    assert grow.kind == "margin"
    # used + the rise + the band between the headroom's trigger and its spare (half of 5 GiB × 0.25 + 128 MiB)
    band = (5 * GIB * 0.25 + 128 * MIB) / 2
    assert grow.target_bytes == align_up(math.ceil(5 * GIB + 4 * GIB + band), STEP)


def test_a_grow_for_the_rise_is_not_followed_by_another_for_a_little_more_use() -> None:
    policy = MemoryPolicy()
    state = policy.new_state()
    policy.decide(state, obs(0, 8 * GIB, 1 * GIB))
    grow = policy.decide(state, obs(1, 8 * GIB, 5 * GIB))
    assert grow is not None
    # Use creeps up by 100 MiB: the spare is still the whole rise, within the band above it.
    assert policy.decide(state, obs(2, grow.target_bytes, 5 * GIB + 100 * MIB)) is None


def test_the_headroom_alone_still_grows_at_half_its_spare() -> None:
    # No rise larger than the headroom's trigger: the hysteresis of grow_trigger is unchanged.
    policy = MemoryPolicy()
    state = policy.new_state()
    used = 4 * GIB
    headroom = used * 0.25 + 128 * MIB
    size = align_up(math.ceil(used + 0.6 * headroom), STEP)
    assert policy.decide(state, obs(0, size, used)) is None
    assert policy.decide(state, obs(1, size, used + 2 * MIB)) is None  # a 2 MiB rise: spare still above half
    grow = policy.decide(state, obs(2, size, used + math.ceil(0.2 * headroom)))
    assert grow is not None
    assert grow.target_bytes == wanted(used + math.ceil(0.2 * headroom))


def test_a_burst_longer_than_a_sample_meets_a_size_that_holds_its_next_step() -> None:
    # A notebook cell loads a dataframe at 2.5 GiB/s for 3 s (services.simulator.memory: CELL_RISE_S). The rule has
    # seen such a cell before, so it remembers a 2.5 GiB rise. After each sample of the cell the spare must hold a
    # whole rise more: the next second brings one, and a grow ordered on the next sample lands after it.
    policy = MemoryPolicy()
    state = policy.new_state()
    rate = 2560 * MIB
    size, t = 16 * GIB, 0.0
    for used in (3 * GIB, 3 * GIB + rate, 3 * GIB):  # an earlier cell: the rise is remembered
        policy.decide(state, obs(t, size, used, interval_s=1.0))
        t += 1.0
    size = 3 * GIB + rate + 2 * GIB  # 2 GiB spare at the cell's first sample: more than half the rise, not all of it
    for step in range(1, 4):
        used = 3 * GIB + step * rate
        assert used <= size, f"step {step}: the burst outran the size"
        decision = policy.decide(state, obs(t, size, used, interval_s=1.0))
        if decision is not None:
            size = max(size, decision.target_bytes)
        assert size - used >= rate or step == 3, f"step {step}: {size - used} spare for a {rate} rise"
        t += 1.0


def test_one_quick_sample_does_not_cut_the_window_short() -> None:
    # 1-s samples, a window of 10: a sample 0.1 s after the last (a catch-up after a late one) must not shrink the
    # window to 1 s, which would forget the 5 GiB peak for good.
    policy = MemoryPolicy(MemorySettings(window_samples=10))
    state = policy.new_state()
    times = [0.0, 1.0, 2.0, 3.0, 4.0, 4.1, 5.0, 6.0]
    for i, t in enumerate(times):
        interval = t - times[i - 1] if i else 1.0
        policy.decide(state, obs(t, 16 * GIB, 5 * GIB if t == 0 else GIB, interval_s=interval))
    assert state.window.max() == 5 * GIB
    assert 9.0 <= state.window.span_s <= 10.0


def test_never_shrinks_while_swapping_or_under_pressure_and_the_evidence_starts_again() -> None:
    s = MemorySettings(window_samples=12)
    policy = MemoryPolicy(s)
    state = calm(policy, 64 * GIB, 100 * MIB, until=3300)
    # a whole window of evidence, but at the maximum already: a swap cannot grow, and must not shrink
    assert policy.decide(state, obs(3600, 64 * GIB, 100 * MIB, swap_in_bytes_per_s=1e6)) is None
    assert policy.decide(state, obs(3900, 64 * GIB, 100 * MIB, psi_some=0.9)) is None
    for t in range(4200, 3900 + 3600, 300):  # calm again, but not for a whole window yet
        assert policy.decide(state, obs(t, 64 * GIB, 100 * MIB)) is None
    decision = policy.decide(state, obs(3900 + 3600, 64 * GIB, 100 * MIB))
    assert decision is not None
    assert decision.kind == "shrink"


def test_a_shrink_too_small_to_matter_is_not_made() -> None:
    s = MemorySettings(window_samples=2, min_shrink_fraction=0.05)
    policy = MemoryPolicy(s)
    size = wanted(1 * GIB) + 20 * MIB  # 20 MiB above what the window asks: under 5 % of the size
    calm(policy, size, 1 * GIB, until=3000)


def test_unknown_use_never_shrinks_and_grows_on_pressure_from_the_size() -> None:
    policy = MemoryPolicy(MemorySettings(window_samples=2, shrink_interval_s=0))
    state = policy.new_state()
    for t in range(0, 3600, 300):
        assert policy.decide(state, obs(t, 16 * GIB, None)) is None
    grow = policy.decide(state, obs(3600, 16 * GIB, None, psi_some=0.5))
    assert grow is not None
    assert grow.target_bytes == 32 * GIB


def test_a_size_outside_the_bounds_is_brought_into_them() -> None:
    policy = MemoryPolicy()
    decision = policy.decide(policy.new_state(), obs(0, 80 * GIB, 100 * MIB))
    assert decision is not None
    assert (decision.kind, decision.target_bytes) == ("bounds", 64 * GIB)
    decision = policy.decide(policy.new_state(), obs(0, 100 * MIB, 10 * MIB))
    assert decision is not None
    assert decision.target_bytes == 256 * MIB


def test_settings_from_text_are_checked() -> None:
    assert memory_settings({"headroom": "0.5"}).headroom == 0.5
    assert memory_settings() == MemorySettings()
    for bad in ({"headroom": "-1"}, {"nope": "1"}, {"max_shrink_fraction": "0.01"}, {"grow_trigger": "0"}):
        with pytest.raises(MemorySettingsError):
            memory_settings(bad)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(0, 10_000), min_size=1, max_size=200),
    gaps=st.lists(st.sampled_from([1.0, 30.0, 300.0]), min_size=200, max_size=200),
    span=st.sampled_from([0.0, 60.0, 600.0, 3600.0]),
    resolution=st.sampled_from([0.0, 10.0, 300.0]),
)
def test_the_window_max_covers_the_values_within_its_span_and_is_at_most_one_bucket_late(
    values: list[int], gaps: list[float], span: float, resolution: float
) -> None:
    window = WindowMax(span, resolution)
    seen: list[tuple[float, int]] = []
    t = 0.0
    for value, gap in zip(values, gaps, strict=False):
        t += gap
        window.push(t, value)
        seen.append((t, value))
        exact = max(v for when, v in seen if when >= t - span)
        late = max(v for when, v in seen if when >= t - span - resolution)
        assert exact <= window.max() <= late
        if resolution == 0:
            assert window.max() == exact
        else:
            assert len(window) <= span / resolution + 2


def test_a_falling_value_sampled_every_second_keeps_one_entry_per_bucket() -> None:
    window = WindowMax(86400.0, 300.0)
    for t in range(86400):
        window.push(float(t), 10**9 - t)
    assert len(window) == 288
    assert window.max() == 10**9  # the first value is still within the day


sample = st.tuples(
    st.none() | st.integers(0, 24 * GIB),  # used
    st.sampled_from([None, 0.0, 20_000.0, 2e6]),  # swap-in bytes/s
    st.sampled_from([None, 0.0, 0.5]),  # psi some
    st.sampled_from([60.0, 300.0, 1800.0]),  # time to the next sample
)


@settings(max_examples=150, deadline=None)
@given(
    samples=st.lists(sample, min_size=1, max_size=120),
    headroom=st.sampled_from([0.0, 0.1, 0.25, 1.0]),
    window_samples=st.sampled_from([1, 3, 12]),
    shrink_interval_s=st.sampled_from([0.0, 600.0]),
    max_shrink=st.sampled_from([0.1, 0.5, 1.0]),
    low_mib=st.integers(1, 1024),
    high_gib=st.integers(1, 32),
    start_gib=st.integers(0, 40),
    step_mib=st.sampled_from([2, 128]),
)
def test_every_target_is_in_bounds_on_the_block_and_a_shrink_keeps_the_windows_peak_covered(
    samples: list[tuple[int | None, float | None, float | None, float]],
    headroom: float,
    window_samples: int,
    shrink_interval_s: float,
    max_shrink: float,
    low_mib: int,
    high_gib: int,
    start_gib: int,
    step_mib: int,
) -> None:
    s = MemorySettings(
        headroom=headroom,
        window_samples=window_samples,
        shrink_interval_s=shrink_interval_s,
        max_shrink_fraction=max_shrink,
        min_shrink_fraction=min(0.05, max_shrink),
    )
    policy = MemoryPolicy(s)
    state = policy.new_state()
    step = step_mib * MIB
    low, high = low_mib * MIB, high_gib * GIB
    size = max(step, start_gib * GIB)
    history: list[tuple[float, int]] = []
    t = 0.0
    for used, swap, psi, gap in samples:
        o = MemoryObservation(
            time=t,
            size_bytes=size,
            used_bytes=used,
            min_bytes=low,
            max_bytes=high,
            step_bytes=step,
            swap_in_bytes_per_s=swap,
            psi_some=psi,
            interval_s=gap,
        )
        if used is not None:
            history.append((t, used))
        decision = policy.decide(state, o)
        # the same sample decided twice from a copy of nothing but its inputs: deterministic
        if decision is not None:
            target = decision.target_bytes
            assert target % step == 0
            assert align_up(low, step) <= target <= max(align_up(low, step), high), decision
            assert target != size
            if target < size and decision.kind == "shrink":
                span = state.window.span_s  # window_samples of the latest interval
                peak = max(v for when, v in history if when >= t - span - span / WINDOW_BUCKETS)
                assert target >= peak * (1 + headroom), decision
                # and room above what is used now for the largest rise from one sample to the next
                memory = s.rise_memory_s * (1 + 1 / WINDOW_BUCKETS)
                rises = [b - a for (_, a), (when, b) in itertools.pairwise(history) if when >= t - memory]
                assert used is not None
                assert target >= used + max([0, *rises]) or target == max(align_up(low, step), high), decision
                assert target >= size * (1 - max_shrink) - step
                assert (swap or 0.0) <= s.swap_in_bytes_per_s and (psi or 0.0) <= s.psi_some
            size = target
        t += gap


def test_the_rule_is_deterministic() -> None:
    def run() -> list[int | None]:
        policy = MemoryPolicy(MemorySettings(window_samples=3, shrink_interval_s=0))
        state = policy.new_state()
        size, out = 8 * GIB, []
        for i in range(200):
            used = (i * 7919 % 97) * 40 * MIB
            d = policy.decide(state, obs(i * 300.0, size, used, swap_in_bytes_per_s=4096.0 * (i % 13)))
            out.append(None if d is None else d.target_bytes)
            size = d.target_bytes if d else size
        return out

    assert run() == run()
    assert any(t is not None for t in run())


def test_available_above_the_size_reads_as_nothing_used_not_less() -> None:
    policy = MemoryPolicy(MemorySettings(window_samples=1, shrink_interval_s=0, max_shrink_fraction=1.0))
    state = policy.new_state()
    assert policy.decide(state, obs(0, 4 * GIB, None, available_bytes=5 * GIB, interval_s=1.0)) is None
    decision = policy.decide(state, obs(1, 4 * GIB, None, available_bytes=5 * GIB, interval_s=1.0))
    assert decision is not None
    assert decision.reason.startswith("shrink: used at most 0B")
    assert decision.target_bytes == 256 * MIB  # wanted(0) is 128 MiB: the VM's minimum


def test_an_urgent_sample_does_not_cut_a_rise_in_two() -> None:
    # 1-s samples; a pressure trigger's urgent sample 0.3 s into a burst. The burst rose 3 GiB over the regular
    # interval: that is the rise remembered, not the 1 GiB and 2 GiB on each side of the urgent sample.
    policy = MemoryPolicy()
    state = policy.new_state()
    samples = ((0.0, 1 * GIB, False), (1.0, 1 * GIB, False), (1.3, 2 * GIB, True), (2.0, 4 * GIB, False))
    last = 0.0
    for t, used, urgent in samples:
        policy.decide(state, obs(t, 16 * GIB, used, interval_s=(t - last) or 1.0, urgent=urgent))
        last = t
    assert state.rises.max() == 3 * GIB


def test_regular_samples_each_measure_their_own_rise() -> None:
    policy = MemoryPolicy()
    state = policy.new_state()
    for t, used in ((0.0, 1 * GIB), (1.0, 2 * GIB), (1.98, 2 * GIB + 512 * MIB), (3.0, 3 * GIB)):
        policy.decide(state, obs(t, 16 * GIB, used, interval_s=1.0))
    assert state.rises.max() == 1 * GIB  # a sample 20 ms early still starts the next rise
