"""The division of a full host among its VMs (services.decider.division): floors, present need by priority and
weighted max-min fairness, the queue head all or nothing, insurance last and within the watermark, and whole
caps that do not move for noise. Pure."""

from __future__ import annotations

import pytest

from services.decider.division import Division, Share, divide, water_fill, whole


def caps(shares: list[Share], capacity: int, insurance: int | None = None, head: int | None = None) -> dict[str, int]:
    division = divide(shares, capacity, capacity if insurance is None else insurance, head)
    return whole(shares, division, {})


def test_water_fill_shares_by_weight_up_to_each_ones_top() -> None:
    assert water_fill([(0, 10, 1), (0, 10, 3)], 8) == pytest.approx([2, 6])
    assert water_fill([(0, 1, 1), (0, 10, 1)], 8) == pytest.approx([1, 7])  # what one cannot take goes on
    assert water_fill([(3, 10, 1), (0, 10, 1)], 8) == pytest.approx([4, 4])  # a floor counts towards its share
    assert water_fill([(5, 10, 1), (0, 10, 1)], 8) == pytest.approx([5, 3])  # and is never taken away
    assert water_fill([(0, 2, 1), (0, 3, 1)], 100) == [2, 3]
    assert water_fill([(2, 5, 1), (1, 5, 1)], 1) == [2, 1]  # not even the floors: floors


def test_higher_priority_need_is_served_first() -> None:
    shares = [Share("low", 2, 1, 8, 8, priority=0), Share("high", 2, 1, 8, 8, priority=5)]
    assert caps(shares, 10) == {"low": 2, "high": 8}


def test_within_a_priority_needs_share_by_weight() -> None:
    shares = [Share("a", 1, 1, 12, 12, weight=1), Share("b", 1, 1, 12, 12, weight=3)]
    assert caps(shares, 12) == {"a": 3, "b": 9}
    small = [Share("a", 1, 1, 2, 2, weight=1), Share("b", 1, 1, 12, 12, weight=3)]
    assert caps(small, 12) == {"a": 2, "b": 10}  # a needs no more than 2: the rest goes to b


def test_insurance_yields_to_need_whatever_the_priority() -> None:
    """A high-priority VM holding 8 for a burst while it needs 2 gives way to a low-priority VM's present need."""
    shares = [Share("idle", 8, 1, 2, 8, priority=10), Share("busy", 4, 1, 8, 8, priority=-5)]
    assert caps(shares, 12) == {"idle": 4, "busy": 8}


def test_what_is_left_after_need_goes_to_insurance_by_priority() -> None:
    shares = [Share("a", 2, 1, 2, 6, priority=1), Share("b", 2, 1, 2, 6, priority=0)]
    assert caps(shares, 8) == {"a": 6, "b": 2}


def test_insurance_stops_at_the_watermark_and_need_does_not() -> None:
    insurers = [Share("a", 2, 1, 2, 8), Share("b", 2, 1, 2, 8)]
    assert sum(caps(insurers, 16, insurance=12).values()) == 12
    needy = [Share("a", 2, 1, 8, 8), Share("b", 2, 1, 8, 8)]
    assert caps(needy, 16, insurance=12) == {"a": 8, "b": 8}


def test_the_queue_head_takes_insurance_but_not_need() -> None:
    shares = [Share("held", 8, 1, 2, 8), Share("busy", 4, 1, 4, 4)]
    division = divide(shares, 16, 16, head=6)
    assert division.head_admitted
    assert whole(shares, division, {}) == {"held": 6, "busy": 4}  # 2 of held's insurance make room for 6
    needy = [Share("a", 8, 1, 8, 8), Share("b", 4, 1, 4, 4)]
    assert not divide(needy, 16, 16, head=6).head_admitted  # 4 free: the job cannot start at 4 of its 6


def test_a_head_that_cannot_start_whole_takes_nothing() -> None:
    shares = [Share("a", 2, 1, 2, 10)]
    division = divide(shares, 10, 10, head=9)  # a keeps 2 it needs: 8 left, not 9
    assert not division.head_admitted
    assert whole(shares, division, {}) == {"a": 10}  # so a's insurance may have it all


def test_only_a_preemptible_vm_of_lower_priority_loses_what_it_uses_for_a_higher_need() -> None:
    def division(preemptible: bool, priority: int) -> dict[str, int]:
        batch = Share("batch", 6, 1, 6, 6, priority=priority, preemptible=preemptible)
        return caps([batch, Share("web", 2, 1, 8, 8, priority=5)], 8)

    assert division(preemptible=True, priority=0) == {"batch": 1, "web": 7}  # down to its minimum
    assert division(preemptible=False, priority=0) == {"batch": 6, "web": 2}  # keeps what it uses
    assert division(preemptible=True, priority=5) == {"batch": 6, "web": 2}  # not for the same priority


def test_a_preemptible_vm_keeps_what_it_uses_against_lower_priorities_and_the_queue() -> None:
    batch = Share("batch", 6, 1, 6, 6, priority=1, preemptible=True)
    low = Share("low", 2, 1, 8, 8, priority=0)
    assert caps([batch, low], 8, head=4) == {"batch": 6, "low": 2}


def test_whole_caps_keep_their_place_for_noise_below_one_vcpu() -> None:
    three = [Share(name, 1, 1, 10, 10) for name in ("a", "b", "c")]
    first = whole(three, divide(three, 10, 10), {})
    assert sorted(first.values()) == [3, 3, 4] and sum(first.values()) == 10
    # the shares move a little (one VM needs a bit less): no cap moves
    moved = [Share("a", 1, 1, 10, 10), Share("b", 1, 1, 10, 10), Share("c", 1, 1, 3, 3)]
    assert whole(moved, Division({"a": 3.3, "b": 3.45, "c": 3.25}, False), first) == first
    # a move of a whole vCPU moves it
    far = whole(moved, Division({"a": 4.6, "b": 4.4, "c": 1.0}, False), first)
    assert far["c"] == 1 and sum(far.values()) <= 10


def test_a_need_flickering_by_one_vcpu_moves_no_cap_after_the_first_change_and_leaves_none_idle() -> None:
    def need_of_a(need: int) -> list[Share]:
        return [Share("a", 1, 1, need, need), Share("b", 1, 1, 8, 8), Share("c", 1, 1, 8, 8)]

    seen = []
    previous: dict[str, int] = {}
    for need in (4, 3, 4, 3, 4, 3):
        shares = need_of_a(need)
        previous = whole(shares, divide(shares, 10, 10), previous)
        assert sum(previous.values()) == 10
        seen.append(previous)
    assert seen[1:] == [seen[1]] * 5


def test_kept_caps_never_promise_more_than_the_shares() -> None:
    shares = [Share("a", 1, 1, 10, 10), Share("b", 1, 1, 10, 10)]
    previous = {"a": 5, "b": 5}
    kept = whole(shares, Division({"a": 4.2, "b": 4.8}, False), previous)  # 9 in all now, both within 1
    assert sum(kept.values()) == 9


def test_room_the_queue_head_does_not_fit_in_yet_is_kept_from_lower_priorities_not_lent() -> None:
    shares = [
        Share("batch", 4, 1, 4, 4, priority=-10, preemptible=True),
        Share("a", 2, 1, 2, 2),
        Share("b", 2, 1, 3, 3),
    ]
    # 8 vCPUs: a and b need 5, the head 6 does not fit; the 3 left wait for it rather than go to the batch job.
    waiting = divide(shares, 8, 8, head=6)
    assert not waiting.head_admitted
    assert waiting.shares["batch"] == 1 and waiting.shares["b"] == 3
    # No queue: the batch job has the room.
    assert divide(shares, 8, 8).shares["batch"] == 3
