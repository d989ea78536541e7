"""The actuator's memory of answered commands (services/actuator/answered.py): pure, tested directly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.actuator.answered import AnsweredCommands


def test_an_id_is_kept_for_the_window_after_its_answer_then_forgotten() -> None:
    memory = AnsweredCommands(keep_s=600.0)
    memory.add("a", at=1000.0)
    memory.add("b", at=1500.0)
    assert "a" in memory and "b" in memory
    memory.add("c", at=1600.5)  # a is now 600.5 s old
    assert "a" not in memory
    assert ("b" in memory, "c" in memory, len(memory)) == (True, True, 2)


def test_an_id_read_back_late_with_an_older_time_is_never_forgotten_early() -> None:
    memory = AnsweredCommands(keep_s=10.0)
    memory.add("new", at=100.0)
    memory.add("old", at=95.0)  # read back from the log after a newer live answer
    memory.forget_before(99.0)  # "old" is due, but waits behind "new": kept longer, never dropped early
    assert "old" in memory and "new" in memory
    memory.forget_before(100.5)
    assert "old" not in memory and "new" not in memory


def test_a_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        AnsweredCommands(keep_s=0.0)


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 50)), max_size=60), st.floats(0.5, 20))
def test_every_id_answered_within_the_window_of_the_latest_answer_is_remembered(
    answers: list[tuple[str, float]], keep_s: float
) -> None:
    memory = AnsweredCommands(keep_s)
    times = sorted(t for _, t in answers)
    ordered = sorted(answers, key=lambda a: a[1])  # live answers come in time order
    for command_id, at in ordered:
        memory.add(command_id, at)
    latest = times[-1] if times else 0.0
    for command_id, at in ordered:
        if at > latest - keep_s:
            assert command_id in memory
    for command_id in set("abcdefgh") - {c for c, _ in answers}:
        assert command_id not in memory
