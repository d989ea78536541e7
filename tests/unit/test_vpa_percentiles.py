"""``vpa``'s three percentiles in one walk up its histogram give exactly what one walk per percentile gives (the
plain walk is written out here as it was before). Pure; no sockets."""

from __future__ import annotations

import random

from services.decider.policies.vpa import VpaPolicy, VpaState, bucket_start


def _plain_percentile(state: VpaState, q: float) -> float:
    if state.total <= 0:
        return 0.0
    threshold = q * state.total
    cumulative = 0.0
    for b in sorted(state.weights):
        cumulative += state.weights[b]
        if cumulative >= threshold:
            return bucket_start(b + 1)
    return bucket_start(max(state.weights) + 1)


def test_one_walk_gives_each_percentile_bit_for_bit_in_any_order_of_the_quantiles() -> None:
    rng = random.Random(5)
    for _ in range(2000):
        weights = {rng.randint(0, 200): rng.choice([rng.random(), rng.random() * 1e9, 1e-12]) for _ in range(40)}
        total = sum(weights.values())
        # The running total the policy keeps can differ from the sum in the last bits (it is added as samples come),
        # so that the highest quantiles are sometimes never reached: then the last bucket's end.
        total *= rng.choice([1.0, 1.0 + 1e-15, 1.0 - 1e-15, 2.0])
        state = VpaState(weights=weights, total=total)
        qs = tuple(rng.choice([0.5, 0.9, 0.95, 0.999999, 1.0, rng.random()]) for _ in range(3))
        assert VpaPolicy.percentiles(state, qs) == [_plain_percentile(state, q) for q in qs]
        assert VpaPolicy.percentile(state, qs[0]) == _plain_percentile(state, qs[0])


def test_an_empty_history_has_every_percentile_at_zero() -> None:
    assert VpaPolicy.percentiles(VpaState(), (0.5, 0.9, 0.95)) == [0.0, 0.0, 0.0]
