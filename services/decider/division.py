"""How a full host's vCPUs are divided among its VMs: tiers, priority, weighted max-min fairness. Pure.

``divide`` gives each VM a share in three tiers, each served only from what the tiers before it left:

1. **Floors.** Each VM's minimum; a VM that is not preemptible also keeps what it has and needs now
   (``min(held, need)``), whatever anyone else's priority.
2. **Present need**, priority by priority, higher first. Within a priority, a preemptible VM first gets back
   to what it has and needs now (only a higher priority may take that), then the VMs' needs are shared by
   weighted max-min fairness (each VM's share grows in proportion to its weight until its need is met). The
   head of the host's waiting queue is a claim at priority 0 for its whole requested size, all or nothing
   (a job starts only at its requested size); while it does not fit, the room it would take is kept from
   lower priorities (need and insurance), not lent to them and preempted back when it fits.
3. **Insurance** (what a VM wants above its need, against a burst that may return): by priority and weight
   again, with what is left up to the insurance limit (capacity × watermark).

So present need beats insurance whatever the priority, and a preemptible VM of lower priority may lose what
it uses now to a higher priority's need. ``whole`` turns the shares into whole vCPUs, keeping a VM's previous
cap while its share stays within one vCPU of it, so caps do not move for noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

EPS = 1e-9
HEAD = "\0head"  # the waiting queue's head among the shares; no VM name holds a NUL


class Share(NamedTuple):
    """One VM's claim on its host (sizes in vCPUs): ``held`` what it has or is being given, ``need`` what the
    demand seen now needs and ``want`` what its policy wants (``minimum ≤ need ≤ want``)."""

    vm: str
    held: int
    minimum: int
    need: int
    want: int
    priority: int = 0
    weight: float = 1.0
    preemptible: bool = False

    @property
    def kept(self) -> int:
        """What it has and needs now: taken from it only for a higher priority's need, if it is preemptible."""
        return max(self.minimum, min(self.held, self.need))

    @property
    def floor(self) -> int:
        """What no other claim may take from it."""
        return self.minimum if self.preemptible else self.kept


class Division(NamedTuple):
    shares: dict[str, float]  # each VM's share, in vCPUs (not whole)
    head_admitted: bool  # whether the head of the waiting queue gets its requested size


def water_fill(items: Sequence[tuple[float, float, float]], budget: float) -> list[float]:
    """Weighted max-min fairness: item ``(low, high, weight)`` gets ``clamp(level × weight, low, high)``, at the
    one level where the whole ``budget`` is given (every ``high`` if it is enough; every ``low`` if not even
    that)."""
    lows = sum(low for low, _, _ in items)
    if budget <= lows + EPS:
        return [low for low, _, _ in items]
    if budget >= sum(high for _, high, _ in items) - EPS:
        return [high for _, high, _ in items]
    # f(level) = Σ clamp(level·w, low, high) rises piecewise linearly: item i adds slope w_i between low_i/w_i and
    # high_i/w_i. Walk the breakpoints to the segment where f reaches the budget.
    events = sorted(
        [(low / w, w) for low, high, w in items if high > low]
        + [(high / w, -w) for low, high, w in items if high > low]
    )
    level, given, slope = 0.0, lows, 0.0
    for at, change in events:
        if slope > 0 and given + slope * (at - level) >= budget:
            break
        given += slope * (at - level)
        level, slope = at, slope + change
    level += (budget - given) / slope if slope > 0 else 0.0
    return [min(high, max(low, level * w)) for low, high, w in items]


def _fill(alloc: dict[str, float], group: Sequence[Share], tops: Sequence[float], room: float) -> float:
    """Share ``room`` among ``group`` up to ``tops`` from what each has in ``alloc``; the room left."""
    before = sum(alloc[s.vm] for s in group)
    filled = water_fill([(alloc[s.vm], top, s.weight) for s, top in zip(group, tops, strict=True)], before + room)
    for s, value in zip(group, filled, strict=True):
        alloc[s.vm] = value
    return room - (sum(filled) - before)


def divide(shares: Sequence[Share], capacity: int, insurance: int, head: int | None = None) -> Division:
    """Each VM's share of ``capacity`` vCPUs (insurance only up to ``insurance`` in all), in the tiers of the
    module's docstring; ``head``: the requested size of the first job waiting for the host, if any."""
    alloc = {s.vm: float(s.floor) for s in shares}
    room = capacity - sum(alloc.values())
    levels = sorted({s.priority for s in shares} | ({0} if head else set()), reverse=True)
    by_level = {p: [s for s in shares if s.priority == p] for p in levels}
    admitted = False
    reserved = 0.0  # kept from lower priorities for the head while it does not fit yet
    for p in levels:
        group = by_level[p]
        kept_back = min(room, reserved) if p < 0 else 0.0
        if room - kept_back <= EPS:
            break
        room = kept_back + _fill(alloc, group, [float(s.kept) for s in group], room - kept_back)
        if p == 0 and head:
            trial = dict(alloc)
            trial[HEAD] = 0.0
            with_head = [*group, Share(HEAD, 0, 0, head, head)]
            left = _fill(trial, with_head, [float(s.need) for s in with_head], room)
            if trial[HEAD] >= head - 1e-6:
                admitted, room = True, left
                alloc.update((s.vm, trial[s.vm]) for s in group)
                continue
            reserved = float(head)
        room = kept_back + _fill(alloc, group, [float(s.need) for s in group], room - kept_back)
    spent = capacity - room
    extra = min(room, insurance - spent)
    for p in levels:
        group = by_level[p]
        kept_back = min(extra, reserved) if p < 0 else 0.0
        if extra - kept_back <= EPS:
            break
        extra = kept_back + _fill(alloc, group, [float(s.want) for s in group], extra - kept_back)
    return Division(alloc, admitted)


def whole(shares: Sequence[Share], division: Division, previous: Mapping[str, int]) -> dict[str, int]:
    """Each VM's cap in whole vCPUs: its share rounded down, the vCPUs that leaves over given to the largest
    remainders (higher priority, then name, on a tie), and its ``previous`` cap kept while its share is within
    one vCPU of it. The caps add up to the shares, rounded down."""
    alloc = division.shares
    total = math.floor(sum(alloc[s.vm] for s in shares) + 1e-6)
    caps = {s.vm: max(s.floor, math.floor(alloc[s.vm] + 1e-6)) for s in shares}
    order = sorted(shares, key=lambda s: (-(alloc[s.vm] - caps[s.vm]), -s.priority, s.vm))
    left = total - sum(caps.values())
    for s in order[: max(0, left)]:
        caps[s.vm] += 1
    fresh = dict(caps)
    for s in shares:
        old = previous.get(s.vm)
        if old is not None and old >= s.floor and abs(alloc[s.vm] - old) < 1 - 1e-6:
            caps[s.vm] = old
    over = sum(caps.values()) - total
    # Keeping old caps must not promise more than there is: those kept above their fresh cap, furthest above
    # their share first, go back to it. Nor leave vCPUs to no one: those furthest below their share get one more.
    kept_high = sorted((s for s in shares if caps[s.vm] > fresh[s.vm]), key=lambda s: (alloc[s.vm] - caps[s.vm], s.vm))
    for s in kept_high:
        if over <= 0:
            break
        over -= caps[s.vm] - fresh[s.vm]
        caps[s.vm] = fresh[s.vm]
    if over < 0:
        # Every cap is within one vCPU of its share, so one more each, furthest below first, is enough.
        for s in sorted(shares, key=lambda s: (caps[s.vm] - alloc[s.vm], -s.priority, s.vm)):
            if over >= 0 or alloc[s.vm] - caps[s.vm] <= 1e-6:
                break
            caps[s.vm] += 1
            over += 1
    return caps
