"""The decider's flood intake: newest sample per VM wins, in first-come order, within a bound."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.decider.mailbox import LatestPerKey


def drain(box: LatestPerKey[str, int]) -> list[tuple[str, int]]:
    out = []
    while (item := box.pop()) is not None:
        out.append(item)
    return out


def test_a_newer_sample_replaces_the_waiting_one_and_keeps_its_place() -> None:
    box: LatestPerKey[str, int] = LatestPerKey(10)
    for key, value in [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3)]:
        box.put(key, value)
    assert drain(box) == [("a", 3), ("b", 1), ("c", 1)]
    assert box.shed == 2


def test_beyond_the_capacity_the_longest_waiting_vm_is_shed() -> None:
    box: LatestPerKey[str, int] = LatestPerKey(2)
    assert box.put("a", 1) is None
    assert box.put("b", 1) is None
    assert box.put("c", 1) == ("a", 1)  # handed back, for the service to judge
    assert drain(box) == [("b", 1), ("c", 1)]


def test_a_replaced_sample_is_handed_back() -> None:
    box: LatestPerKey[str, int] = LatestPerKey(2)
    assert box.put("a", 1) is None
    assert box.put("a", 2) == ("a", 1)
    assert drain(box) == [("a", 2)]


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers()), max_size=200), st.integers(1, 10))
def test_nothing_is_unaccounted_and_the_newest_always_wins(puts: list[tuple[str, int]], capacity: int) -> None:
    box: LatestPerKey[str, int] = LatestPerKey(capacity)
    handed_back = []
    for key, value in puts:
        shed = box.put(key, value)
        if shed is not None:
            handed_back.append(shed)
        assert len(box) <= capacity
    out = drain(box)
    assert len(out) + box.shed == len(puts)
    assert sorted(out + handed_back) == sorted(puts)  # every sample comes out once: decided or handed back
    newest = dict(puts)
    for key, value in out:
        assert value == newest[key]
    assert len({k for k, _ in out}) == len(out)
