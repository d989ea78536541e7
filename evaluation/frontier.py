"""The cost/harm frontier of a policy from a sweep of its trade-off parameter. Pure.

A sweep gives points (unmet %, cost × oracle). A policy "reaches" a level of unmet demand at the cheapest
cost among its points at or below that level, and along any straight line between two of its points that
crosses it (mixing two settings, over time or over VMs, costs the mix of their costs). Below its lowest
point's unmet the level is out of reach.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

DEFAULT_LEVELS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def cost_at(points: Iterable[tuple[float, float]], level: float) -> float | None:
    """The lowest cost of the sweep ``points`` (unmet %, cost) at unmet ``level``; None if out of reach."""
    pts = sorted(points)
    best: float | None = None
    for i, (u1, c1) in enumerate(pts):
        if u1 <= level:
            best = c1 if best is None else min(best, c1)
        for u2, c2 in pts[i + 1 :]:
            if u1 <= level <= u2 and u2 > u1:
                mixed = c1 + (c2 - c1) * (level - u1) / (u2 - u1)
                best = mixed if best is None else min(best, mixed)
    return best


def frontier(points: Sequence[tuple[float, float]], levels: Sequence[float]) -> dict[str, object]:
    """Per level the cost reached (None: out of reach), and the lowest unmet the sweep reaches."""
    return {
        "lowest_unmet_pct": min((u for u, _ in points), default=None),
        "cost_at": {f"{level:g}": cost_at(points, level) for level in levels},
    }
