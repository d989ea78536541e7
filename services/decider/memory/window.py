"""The maximum of a value over a sliding time window, in O(1) amortised per sample (a monotonic deque).

Each value enters once and leaves once; the deque holds only values that can still become the maximum (those
larger than every later one), so the front is the window's maximum.

A live collector samples every second and a day's window of a slowly falling value would then hold 86,400
entries per VM. So time is cut into buckets (``resolution_s``): a value that a larger one of the same bucket already
covers is not added; that one's time moves to the newer value's instead, so it stays as long as the newer value
would have. The maximum is then never below the true one and at most one bucket late to fall, and the deque holds
at most one entry per bucket.
"""

from __future__ import annotations

from collections import deque


class WindowMax:
    """Values pushed with increasing times; ``max()`` is the largest whose time is within the last ``span_s``
    (or, by at most ``resolution_s``, a little older)."""

    __slots__ = ("_times", "_values", "resolution_s", "span_s")

    def __init__(self, span_s: float, resolution_s: float = 0.0) -> None:
        self.span_s = span_s
        self.resolution_s = resolution_s
        # Two deques rather than one of pairs: a push then makes no tuple (a replay pushes millions).
        self._times: deque[float] = deque()
        self._values: deque[int] = deque()

    def push(self, time: float, value: int) -> None:
        """Add ``value`` at ``time`` and forget what has left the window ending at ``time``."""
        times, values = self._times, self._values
        while values and values[-1] <= value:
            values.pop()
            times.pop()
        res = self.resolution_s
        if values and res > 0 and times[-1] // res == time // res:
            times[-1] = time  # the larger value of this bucket now lives as long as this one would
        else:
            times.append(time)
            values.append(value)
        oldest = time - self.span_s
        while times[0] < oldest:
            times.popleft()
            values.popleft()

    def max(self) -> int:
        """The window's maximum; 0 before any push."""
        return self._values[0] if self._values else 0

    def __len__(self) -> int:
        return len(self._values)

    def entries(self) -> tuple[list[float], list[int]]:
        """The times and values it holds, oldest first (for a snapshot)."""
        return list(self._times), list(self._values)

    def load(self, times: list[float], values: list[int]) -> None:
        """Hold these entries (from :meth:`entries`) instead of its own."""
        if len(times) != len(values):
            raise ValueError(f"{len(times)} times for {len(values)} values")
        self._times, self._values = deque(times), deque(values)
