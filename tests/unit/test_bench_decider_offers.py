"""The decider benchmark's paced offers: after its ladder, it halves the gap between the highest offer taken in full
and the lowest one not, on a grain of 500 samples a second. Pure; no sockets."""

from __future__ import annotations

from evaluation.bench.decider import OFFER_GRAIN, between


def test_the_offer_between_is_halfway_on_the_grain() -> None:
    assert between(10_000, 20_000) == 15_000
    assert between(15_000, 20_000) == 17_500
    assert between(10_000, 11_000) == 10_500
    assert between(0, 10_000) == 5_000  # even the first offer was not taken in full


def test_no_offer_between_two_a_grain_apart() -> None:
    assert between(10_000, 10_000 + OFFER_GRAIN) is None
    assert between(10_000, 10_000) is None
