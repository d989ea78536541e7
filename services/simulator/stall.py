"""A simulated guest's PSI trigger, the pure part: one VM's CPU stall within a trailing window, and when a trigger
``some STALL WINDOW`` (kernel ``Documentation/accounting/psi.rst``) would fire on it.

The simulator integrates each VM in steps (at most ``MAX_INTEGRATION_STEP_S``); a step in which its demand exceeded
its online vCPUs is a step in which some runnable task waited, so the whole step is ``some`` stall, as the kernel
counts it. :meth:`StallTrigger.account` takes each step as the host integrates it (no polling of its own) and says
when within the step the stall in the trailing window first reached STALL; like the kernel it fires at most once a
window. Nothing here reads a clock: times are the simulator's, passed in.
"""

from __future__ import annotations

from collections import deque

from shared.sim_api import PSI_STALL_S as DEFAULT_STALL_S
from shared.sim_api import PSI_WINDOW_S as DEFAULT_WINDOW_S

__all__ = ["DEFAULT_STALL_S", "DEFAULT_WINDOW_S", "StallTrigger"]
# Bisection steps for the moment of crossing: 2**-30 of a step (0.25 s) is far below any clock's resolution.
_BISECT_STEPS = 30


class StallTrigger:
    """One VM's trigger: stalled spans within the last window, and when it last fired."""

    __slots__ = ("_last_fired", "_spans", "stall_s", "window_s")

    def __init__(self, stall_s: float = DEFAULT_STALL_S, window_s: float = DEFAULT_WINDOW_S) -> None:
        if not 0 < stall_s <= window_s:
            raise ValueError(
                f"a trigger's stall must be more than 0 and at most its window, got {stall_s} in {window_s}"
            )
        self.stall_s = stall_s
        self.window_s = window_s
        # Stalled spans (start, end), oldest first, none ending before the window: a handful at most (the window is
        # a few integration steps, and touching spans are merged).
        self._spans: deque[tuple[float, float]] = deque()
        self._last_fired = float("-inf")

    def stall_within(self, t: float) -> float:
        """Seconds stalled within the window ending at ``t`` (of the spans accounted so far)."""
        since = t - self.window_s
        total = 0.0
        for start, end in self._spans:
            lo = start if start > since else since
            hi = end if end < t else t
            if hi > lo:
                total += hi - lo
        return total

    def account(self, start: float, end: float, stalled: bool) -> float | None:
        """Count the step ``start``..``end`` (stalled throughout, or not at all): the moment within it the trigger
        fired, or None."""
        spans = self._spans
        # Spans wholly before the window can never count again: dropping them keeps every step's cost small.
        since = end - self.window_s
        while spans and spans[0][1] <= since:
            spans.popleft()
        if not stalled:
            return None
        if spans and spans[-1][1] >= start:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
        # Once a window, as the kernel rate-limits a trigger's events.
        earliest = max(start, self._last_fired + self.window_s)
        if earliest > end or self.stall_within(end) < self.stall_s:
            return None
        # The window's stall grows (or holds, where stall leaves its tail) while this step is stalled: it is
        # monotonic over the step, so the first moment it reached STALL is found by bisection.
        if self.stall_within(earliest) >= self.stall_s:
            fired = earliest
        else:
            lo, hi = earliest, end
            for _ in range(_BISECT_STEPS):
                mid = (lo + hi) / 2
                if self.stall_within(mid) >= self.stall_s:
                    hi = mid
                else:
                    lo = mid
            fired = hi
        self._last_fired = fired
        return fired

    def due(self, t: float) -> float:
        """When, if the VM stays stalled from ``t`` on, the trigger would fire next (no earlier than ``t``): the
        moment the simulator must have integrated to, to say so on time."""
        lower = max(t, self._last_fired + self.window_s)
        # Stalling on, the window gains at least nothing and at most the time passed: the deficit is a lower bound,
        # and stall already counted cannot leave the window before it ends, so lower + deficit is exact enough.
        return lower + max(0.0, self.stall_s - self.stall_within(lower))
