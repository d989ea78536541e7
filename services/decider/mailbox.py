"""The decider's metric intake under a flood: a bounded queue that keeps only the newest sample per VM.

A decision needs a VM's latest sample, not every one that queued up behind a slow decider: a newer sample
replaces the waiting one of the same VM (which keeps its place in line, so one noisy VM cannot push the
others back), and when more VMs wait than the capacity allows, the longest-waiting one is dropped. Each
replaced or dropped sample is counted as shed and handed back, so the service can still judge it (a malformed one is
dropped as malformed, not shed unseen). Commands and results never pass through here.

Pure: no clock, no I/O; the service wakes its worker when ``put`` returns.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LatestPerKey(Generic[K, V]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.shed = 0
        self._waiting: OrderedDict[K, V] = OrderedDict()

    def put(self, key: K, value: V) -> tuple[K, V] | None:
        """Queue ``value`` as ``key``'s newest; returns the waiting key and value it shed, if it shed one."""
        waiting = self._waiting
        shed: tuple[K, V] | None = None
        if key in waiting:
            shed = (key, waiting[key])
            waiting[key] = value  # keeps its place in line
        else:
            if len(waiting) >= self.capacity:
                shed = waiting.popitem(last=False)
            waiting[key] = value
        if shed is not None:
            self.shed += 1
        return shed

    def pop(self) -> tuple[K, V] | None:
        """The longest-waiting key and its newest value, or None when nothing waits."""
        if not self._waiting:
            return None
        return self._waiting.popitem(last=False)

    def __len__(self) -> int:
        return len(self._waiting)
