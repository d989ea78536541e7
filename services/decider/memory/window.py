"""The maximum of a value over a sliding time window, in O(1) amortised per sample (a monotonic deque).

Each value enters once and leaves once; the deque holds only values that can still become the maximum (those
larger than every later one), so the front is the window's maximum.
"""

from __future__ import annotations

from collections import deque


class WindowMax:
    """Values pushed with increasing times; ``max()`` is the largest whose time is within the last ``span_s``."""

    __slots__ = ("_times", "_values", "span_s")

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        # Two deques rather than one of pairs: a push then makes no tuple (a replay pushes millions).
        self._times: deque[float] = deque()
        self._values: deque[int] = deque()

    def push(self, time: float, value: int) -> None:
        """Add ``value`` at ``time`` and forget what has left the window ending at ``time``."""
        times, values = self._times, self._values
        while values and values[-1] <= value:
            values.pop()
            times.pop()
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
