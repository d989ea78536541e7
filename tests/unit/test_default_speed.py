"""The structures that make ``default`` fast, against their naive versions (hypothesis): the monotone max-queue
against the maximum of the window, the closure-free ``cheapest_size`` against the walk it replaced, and the memo of
each window's sizes against no memo. Same results, not timings (those are ``hotplug bench replay``'s). Pure."""

from __future__ import annotations

import math
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from services.decider.engine import VmEngine
from services.decider.policies.base import Observation
from services.decider.policies.default import Memory, _push, _push_item, cheapest_size
from services.decider.registry import build_policy

finite = st.floats(0, 64, allow_nan=False)


@given(
    steps=st.lists(st.tuples(st.floats(0.001, 600, allow_nan=False), finite), min_size=1, max_size=60),
    window=st.floats(0, 2000, allow_nan=False),
)
def test_the_monotone_queue_gives_the_peak_of_its_window(steps: list[tuple[float, float]], window: float) -> None:
    queue: deque[tuple[float, float]] = deque()
    shared: deque[tuple[float, float]] = deque()
    seen: list[tuple[float, float]] = []
    t = 0.0
    for gap, value in steps:
        t += gap
        seen.append((t, value))
        # Naive: the highest value of the window, or the newest alone when the window holds nothing else.
        inside = [v for s, v in seen if s > t - window] or [value]
        peak = _push(queue, t, value, t - window)
        assert peak == max(inside)
        assert _push_item(shared, (t, value), t - window) == peak
        assert len(queue) <= len(seen)


def _cheapest_size_walk(memory: Memory, price: float, low: int, high: int, current: int, hysteresis: float) -> int:
    """``cheapest_size`` as it was written before its closure was written out (the reference)."""
    excess, weight = memory.excess, memory.weight
    if weight <= 0:
        return current
    size = len(excess)

    def cost(a: int) -> float:
        return a * weight + price * (excess[a] if a < size else 0.0)

    start = min(max(current, low), high)
    best, best_cost = start, cost(start)
    if best > low and (c := cost(best - 1)) <= best_cost:
        best, best_cost = best - 1, c
        while best > low and (c := cost(best - 1)) <= best_cost:
            best, best_cost = best - 1, c
    else:
        while best < high and (c := cost(best + 1)) < best_cost:
            best, best_cost = best + 1, c
    if best < start and cost(start) - best_cost < hysteresis * weight:
        return start
    return best


@given(
    weight=st.floats(0, 1e6, allow_nan=False),
    excess=st.lists(st.floats(0, 1e6, allow_nan=False), max_size=20),
    price=st.floats(1, 1e5, allow_nan=False),
    low=st.integers(1, 8),
    span=st.integers(0, 16),
    current=st.integers(0, 30),
    hysteresis=st.floats(0, 0.99, allow_nan=False),
)
def test_cheapest_size_walks_as_the_reference_does(
    weight: float, excess: list[float], price: float, low: int, span: int, current: int, hysteresis: float
) -> None:
    # Any excess, not only the convex ones the memories hold: the same walk, the same answer on every input.
    memory = Memory(weight=weight, excess=sorted(excess, reverse=True))
    args = (price, low, low + span, current, hysteresis)
    assert cheapest_size(memory, *args) == _cheapest_size_walk(memory, *args)
    unsorted = Memory(weight=weight, excess=excess)
    assert cheapest_size(unsorted, *args) == _cheapest_size_walk(unsorted, *args)


@settings(max_examples=30, deadline=None)
@given(
    demand=st.lists(st.floats(0, 12, allow_nan=False), min_size=1, max_size=120),
    step=st.sampled_from([1.0, 60.0, 300.0]),
    pressure=st.booleans(),
)
def test_the_memo_of_window_sizes_changes_nothing(demand: list[float], step: float, pressure: bool) -> None:
    """One engine keeps its policy's memos; the other's are emptied before every sample: the same proposals and
    decisions, reasons included."""
    engines = [VmEngine(*build_policy("default")) for _ in range(2)]
    vcpus = [8, 8]
    for i, wanted in enumerate(demand):
        engines[1].policy._sizes_memo.clear()  # type: ignore[attr-defined]
        engines[1].policy._why_memo.clear()  # type: ignore[attr-defined]
        out = []
        for k, engine in enumerate(engines):
            d = min(wanted, 8.0)
            used = min(d, float(vcpus[k]))
            obs = Observation(
                time=i * step,
                vcpus=vcpus[k],
                min_vcpus=1,
                max_vcpus=8,
                used_cores=used,
                interval_s=step,
                pressure_cores=d - used if pressure else None,
            )
            proposal = engine.propose(obs)
            assert proposal is not None
            decision = engine.decide(proposal)
            if decision is not None:
                engine.mark_sent(decision.target, until=math.inf)
                vcpus[k] = decision.target
            out.append((proposal.rec, decision))
        assert out[0] == out[1]
