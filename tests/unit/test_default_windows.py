"""``default``'s monotone max-queue against its naive version (hypothesis): the peak of every window, without
rescanning it. Same results, not timings (those are ``hotplug bench replay``'s). Pure."""

from __future__ import annotations

from collections import deque

from hypothesis import given
from hypothesis import strategies as st

from services.decider.policies.default import _push

finite = st.floats(0, 64, allow_nan=False)


@given(
    steps=st.lists(st.tuples(st.floats(0.001, 600, allow_nan=False), finite), min_size=1, max_size=60),
    window=st.floats(0, 2000, allow_nan=False),
)
def test_the_monotone_queue_gives_the_peak_of_its_window(steps: list[tuple[float, float]], window: float) -> None:
    queue: deque[tuple[float, float]] = deque()
    seen: list[tuple[float, float]] = []
    t = 0.0
    for gap, value in steps:
        t += gap
        seen.append((t, value))
        # Naive: the highest value of the window, or the newest alone when the window holds nothing else.
        inside = [v for s, v in seen if s > t - window] or [value]
        peak = _push(queue, t, value, t - window)
        assert peak == max(inside)
        assert len(queue) <= len(seen)
