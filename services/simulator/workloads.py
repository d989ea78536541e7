"""Demand curves that look like the work our users run: pure, seeded and reproducible; or a recorded trace.

A workload is a sequence of phases (duration, level) drawn from its own seeded generator, plus a small
ripple that is a pure function of time. The same seed gives the same demand at the same simulated time,
however often or irregularly it is asked. Levels are in cores, relative to the VM's requested size.

A :class:`TraceWorkload` instead replays one VM of a recorded trace (the replay CSV), holding each value until
the next one and starting over at the end, so a user rehearses a policy live on their own recordings.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

Phase = tuple[float, float, str]  # (duration_s, demand as a fraction of the VM's size, label)

DAY_S = 86400.0


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _knot(seed: int, i: int) -> float:
    """The ripple's value in [0, 1) at whole second ``i``: the ripple (deterministic noise in [-1, 1]) is
    piecewise linear between whole seconds."""
    return _splitmix(seed * 1_000_003 + i) / 2**64


def training(rng: random.Random) -> Iterator[Phase]:
    """Data loading bursts, epochs, evaluation, and a checkpoint pause every few epochs."""
    epoch = 0
    while True:
        yield rng.uniform(8, 20), rng.uniform(0.85, 1.0), "data-loading"
        yield rng.uniform(50, 120), rng.uniform(0.45, 0.7), "epoch"
        yield rng.uniform(12, 30), rng.uniform(0.15, 0.3), "evaluation"
        epoch += 1
        if epoch % 3 == 0:
            yield rng.uniform(8, 15), 0.04, "checkpoint"


def inference(rng: random.Random) -> Iterator[Phase]:
    """A quiet base that follows the day (scaled by the caller) with request bursts."""
    while True:
        yield rng.expovariate(1 / 40), rng.uniform(0.12, 0.25), "serving"
        yield rng.uniform(5, 20), rng.uniform(0.55, 0.95), "burst"


def notebook(rng: random.Random) -> Iterator[Phase]:
    """Mostly idle; now and then a cell runs for a few seconds."""
    while True:
        yield rng.uniform(45, 180), 0.02, "idle"
        yield rng.uniform(5, 30), rng.uniform(0.2, 0.5), "cell"


def batch(rng: random.Random) -> Iterator[Phase]:
    """Long compute runs separated by idle gaps."""
    while True:
        yield rng.uniform(100, 300), rng.uniform(0.85, 1.0), "run"
        yield rng.uniform(40, 150), 0.03, "idle"


def idle(rng: random.Random) -> Iterator[Phase]:
    while True:
        yield 3600.0, 0.03, "idle"


PROFILES: dict[str, Callable[[random.Random], Iterator[Phase]]] = {
    "training": training,
    "inference": inference,
    "notebook": notebook,
    "batch": batch,
    "idle": idle,
}


class Workload:
    """Demand in cores over simulated time for one VM whose demand peaks at ``size`` cores (levels are shares)."""

    def __init__(self, profile: str, size: float, seed: int, start: float) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown workload profile {profile!r}; choose from {', '.join(PROFILES)}")
        self.profile = profile
        self.size = size
        self.seed = seed
        self._phases = PROFILES[profile](random.Random(seed))
        self._phase_start = start
        self._phase_end = start
        self._level = 0.0
        self.label = ""
        self.phase_index = -1  # phases drawn so far, less one: the current phase's number from 0
        # The ripple's knots around the second last asked (a host asks each VM several times a second).
        self._second = -1
        self._knots = (_knot(seed, -1), _knot(seed, 0))

    def demand(self, t: float) -> float:
        """Demand at time ``t``; ``t`` may jump forward but should not go far backwards."""
        if t >= self._phase_end:
            self._draw(t)
        level = self._level
        if self.profile == "inference":
            level *= 0.6 + 0.4 * math.sin(2 * math.pi * t / DAY_S)
        i = math.floor(t)
        if i != self._second:
            a = self._knots[1] if i == self._second + 1 else _knot(self.seed, i)
            self._knots = (a, _knot(self.seed, i + 1))
            self._second = i
        a, b = self._knots
        level *= 1 + 0.08 * (2 * (a + (b - a) * (t - i)) - 1)
        # max(0, min(1, level)), spelt out: this is the host model's innermost call
        return (0.0 if level < 0.0 else 1.0 if level > 1.0 else level) * self.size

    def _draw(self, t: float) -> None:
        """Draw phases until the one under way at ``t``."""
        while t >= self._phase_end:
            duration, self._level, self.label = next(self._phases)
            self._phase_start = self._phase_end
            self._phase_end += duration
            self.phase_index += 1

    def next_change(self, t: float) -> float:
        """When the phase under way at ``t`` ends (its level changes; the ripple moves on between)."""
        if t >= self._phase_end:
            self._draw(t)
        return self._phase_end

    def phase(self, t: float) -> PhaseAt:
        """The phase under way at ``t`` (drawn as :meth:`demand` draws it: asking does not change the demand)."""
        if t >= self._phase_end:
            self._draw(t)
        return PhaseAt(self.phase_index, self.label, self._phase_start, self._phase_end)


class PhaseAt(NamedTuple):
    """A workload's phase: its number from 0, its label and when it began and ends (simulated seconds)."""

    number: int
    label: str
    start: float
    end: float


class Demand(Protocol):
    """What a simulated VM asks of its workload: demand in cores at a simulated time, and a label."""

    @property
    def profile(self) -> str: ...

    def demand(self, t: float) -> float: ...

    def next_change(self, t: float) -> float:
        """The next moment after ``t`` its demand may step (a simulated guest's PSI trigger checks then)."""
        ...


class TraceWorkload:
    """One VM of a recorded trace, on the simulator's clock.

    ``times`` are the trace's own seconds (sorted), ``values`` the demand in cores at each. The trace time
    ``origin`` is mapped to the simulated time ``start``; each value holds until the next one. After the end the
    trace starts over (``period`` seconds after the previous start): a rehearsal may run longer than the
    recording, and every VM of one file shares the period, so they stay in step with each other. Before a VM's
    first value (its trace starts later than the file's) it holds that first value.
    """

    profile = "trace"

    def __init__(self, times: list[float], values: list[float], origin: float, period: float, start: float) -> None:
        if not times or len(times) != len(values):
            raise ValueError("a trace workload needs one value per time, and at least one")
        if period <= 0:
            raise ValueError(f"the trace period must be positive, got {period}")
        self.times = times
        self.values = values
        self.origin = origin
        self.period = period
        self.start = start

    def trace_time(self, t: float) -> float:
        """The trace's own time that simulated time ``t`` plays."""
        offset = t - self.start
        if offset > 0:
            offset %= self.period
        return self.origin + offset

    def demand(self, t: float) -> float:
        i = bisect.bisect_right(self.times, self.trace_time(t)) - 1
        return self.values[max(i, 0)]

    def next_change(self, t: float) -> float:
        """When the value held at ``t`` gives way to the next (or the trace starts over)."""
        played = self.trace_time(t)
        i = bisect.bisect_right(self.times, played)
        following = self.times[i] if i < len(self.times) else self.origin + self.period
        return t + (following - played)
