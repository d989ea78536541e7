"""``vpa``: the Kubernetes VPA recommender (docs/deciders.md §3), rounded up to whole vCPUs.

A decaying histogram of CPU usage (exponential buckets, 5 % growth from 0.01 cores; weights halve every
``half_life_s``). Target = P90 × (1 + margin); lower and upper bounds from P50 and P95 widened by the
confidence in the history's length. Like VPA's updater it acts when the VM is outside the bounds, or,
once the history is ``min_age_s`` old, when the target differs by at least ``update_threshold``.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated

import msgspec

from services.decider.policies.base import Observation, Params, PolicyBase, Recommendation

FIRST_BUCKET = 0.01
GROWTH = 0.05
_LOG_GROWTH = math.log1p(GROWTH)


def bucket_of(cores: float) -> int:
    """Index of the exponential bucket holding ``cores`` (VPA: first bucket 0.01 wide, each 5 % wider)."""
    if cores < FIRST_BUCKET:
        return 0
    # bucket i starts at FIRST_BUCKET * ((1+g)^i - 1) / g
    return int(math.log1p(cores * GROWTH / FIRST_BUCKET) / _LOG_GROWTH)


def bucket_start(index: int) -> float:
    return FIRST_BUCKET * ((1 + GROWTH) ** index - 1) / GROWTH


# The same floats, each computed once: a VM's percentiles are asked for at every sample.
_bucket_start_cached = functools.cache(bucket_start)


def _walk_order(qs: tuple[float, ...]) -> tuple[int, ...]:
    """The positions of ``qs`` from the lowest quantile up: the order a walk up the buckets reaches them."""
    return tuple(sorted(range(len(qs)), key=qs.__getitem__))


def _percentiles(state: VpaState, buckets: list[int], qs: tuple[float, ...], order: tuple[int, ...]) -> list[float]:
    """``VpaPolicy.percentiles``, with ``buckets`` = ``sorted(state.weights)`` and ``order`` = ``_walk_order(qs)``
    worked out by the caller."""
    total = state.total
    if total <= 0:
        return [0.0] * len(qs)
    weights = state.weights
    found = [0.0] * len(qs)
    slot = order[0]
    threshold = qs[slot] * total
    i = 0
    cumulative = 0.0
    for b in buckets:
        cumulative += weights[b]
        while cumulative >= threshold:
            found[slot] = _bucket_start_cached(b + 1)
            i += 1
            if i == len(order):
                return found
            slot = order[i]
            threshold = qs[slot] * total
    last = _bucket_start_cached(buckets[-1] + 1)
    for slot in order[i:]:
        found[slot] = last
    return found


class VpaParams(Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    target_percentile: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.90
    lower_percentile: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.50
    upper_percentile: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.95
    margin: Annotated[float, msgspec.Meta(ge=0)] = 0.15
    half_life_s: Annotated[float, msgspec.Meta(gt=0)] = 86400.0
    update_threshold: Annotated[float, msgspec.Meta(ge=0)] = 0.10
    min_age_s: Annotated[float, msgspec.Meta(ge=0)] = 12 * 3600.0


class VpaState(msgspec.Struct):
    weights: dict[int, float] = msgspec.field(default_factory=dict)
    total: float = 0.0
    reference: float | None = None
    first_time: float | None = None


class VpaPolicy(PolicyBase[VpaParams, VpaState]):
    name = "vpa"
    SWEEP = ("target_percentile", (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995))
    params_type = VpaParams
    state_type = VpaState

    def __init__(self, params: VpaParams) -> None:
        super().__init__(params)
        # Read at every sample of every VM: worked out once (the params are frozen).
        self._quantiles = (params.target_percentile, params.lower_percentile, params.upper_percentile)
        self._walk_order = _walk_order(self._quantiles)
        self._factor = 1 + params.margin
        self._last_sorted: tuple[dict[int, float], list[int]] = ({}, [])

    def _sorted_buckets(self, weights: dict[int, float]) -> list[int]:
        """``sorted(weights)``, kept for the last histogram asked about. Replay asks about one VM's histogram at
        every sample in a row, and its buckets change only when ``_add`` adds one (so its length tells) or replaces
        the histogram (so its identity tells). One tuple, replaced whole: threads sharing the policy stay safe."""
        seen, buckets = self._last_sorted
        if seen is not weights or len(buckets) != len(weights):
            buckets = sorted(weights)
            self._last_sorted = (weights, buckets)
        return buckets

    def _add(self, state: VpaState, t: float, cores: float) -> None:
        if state.reference is None:
            state.reference = t
        # Newer samples weigh more, instead of decaying every old one; renormalise before overflow.
        exponent = (t - state.reference) / self.params.half_life_s
        if exponent > 60:
            scale = 2.0**-exponent
            state.weights = {b: w * scale for b, w in state.weights.items() if w * scale > 1e-12}
            state.total = sum(state.weights.values())
            state.reference = t
            exponent = 0.0
        weight = 0.1 * 2.0**exponent
        b = bucket_of(cores)
        state.weights[b] = state.weights.get(b, 0.0) + weight
        state.total += weight

    @staticmethod
    def percentile(state: VpaState, q: float) -> float:
        """The end of the bucket where the cumulative weight reaches ``q`` (as VPA reports it)."""
        return VpaPolicy.percentiles(state, (q,))[0]

    @staticmethod
    def percentiles(state: VpaState, qs: tuple[float, ...]) -> list[float]:
        """``percentile`` at each of ``qs``, in one walk up the buckets (the same sums, so the same floats)."""
        return _percentiles(state, sorted(state.weights), qs, _walk_order(qs))

    def recommend(self, state: VpaState, obs: Observation) -> Recommendation:
        t = obs.time
        if state.first_time is None:
            state.first_time = t
        self._add(state, t, obs.used_cores)
        age_s = t - state.first_time + obs.interval_s
        confidence = age_s / 86400
        factor = self._factor
        buckets = self._sorted_buckets(state.weights)
        at_target, at_lower, at_upper = _percentiles(state, buckets, self._quantiles, self._walk_order)
        # Each is max(0.025, x) written out: the same float (also for a NaN), without a call per sample.
        target = at_target * factor
        target = target if target > 0.025 else 0.025
        lower = at_lower * factor * (1 + 0.001 / confidence) ** -2
        lower = lower if lower > 0.025 else 0.025
        upper = at_upper * factor * (1 + 1 / confidence)
        upper = upper if upper > 0.025 else 0.025
        n = obs.vcpus
        wanted = math.ceil(target - 1e-9)
        wanted = wanted if wanted > 1 else 1
        outside = n < math.ceil(lower - 1e-9) or n > math.ceil(upper - 1e-9)
        p = self.params
        drift = abs(wanted - n) / n >= p.update_threshold and age_s >= p.min_age_s
        if outside or drift:
            why = "outside bounds" if outside else "drift"
            return Recommendation(
                wanted,
                f"P{p.target_percentile * 100:.0f} {target / factor:.2f} cores "
                f"+{p.margin:.0%} → {wanted} vCPUs ({why})",
                why.replace(" ", "-"),
            )
        # Formatted at every sample, and %-formatting is the cheaper way to the same text.
        return Recommendation(n, "within [%.2f, %.2f] cores" % (lower, upper))  # noqa: UP031
