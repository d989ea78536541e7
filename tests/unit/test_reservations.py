"""The actuator's host ledger (services/actuator/reservations.py) and how the command ledger uses it: grows get the
whole vCPUs that fit under the host's capacity, shrinks always pass, a grow under way keeps its room until it ends.
The property over every interleaving is in test_ledger.py's model."""

from __future__ import annotations

import pytest

from services.actuator.checks import Bounds, Plan
from services.actuator.drivers.base import HostView, VmView
from services.actuator.ledger import Ledger, LedgerRules
from services.actuator.reservations import Grant, Reservations
from shared.messages import ErrorCode, ScaleCommand


def host(capacity: int, ticket: int | None = None, **vms: int) -> Reservations:
    room = Reservations("h")
    room.observe(HostView(cpus=capacity, vms=vms), capacity, room.ticket() if ticket is None else ticket)
    return room


def test_a_grow_gets_the_whole_vcpus_that_fit_and_says_how_many() -> None:
    room = host(8, a=2, b=4)
    grant = room.grant("a", before=2, asked=5)
    assert grant == Grant("h", "a", before=2, asked=5, size=4, capacity=8, committed=6)
    refusal = grant.refusal()
    assert refusal is not None and refusal.code is ErrorCode.HOST_FULL
    assert refusal.message == "granted 2 of 3 vCPUs asked: host h has capacity 8, 6 committed"
    assert room.committed() == 8  # the grant is reserved at once
    whole = host(8, a=2, b=4).grant("a", before=2, asked=4)
    assert whole.size == 4 and whole.refusal() is None


def test_two_grows_never_both_take_the_last_core() -> None:
    room = host(5, a=2, b=2)
    first = room.grant("a", before=2, asked=3)
    second = room.grant("b", before=2, asked=3)
    assert (first.steps, second.steps) == (1, 0)
    assert second.committed == 5 and second.refusal() is not None
    # a view taken while a's step is under way still shows it at 2: its reservation holds the core
    room.observe(HostView(cpus=5, vms={"a": 2, "b": 2}), 5, room.ticket())
    assert room.grant("b", before=2, asked=3).steps == 0
    room.release("a", after=3)
    assert room.grant("b", before=2, asked=3).steps == 0  # a has the core now, not a reservation of it


def test_a_view_asked_for_before_a_release_cannot_hide_the_steps_it_made() -> None:
    room = host(6, a=2, b=2)
    ticket = room.ticket()  # the driver is asked; meanwhile a's grow ends
    room.grant("a", before=2, asked=4)
    room.release("a", after=4)
    assert room.observe(HostView(cpus=6, vms={"a": 2, "b": 2}), 6, ticket)
    assert room.commitments() == {"a": 4, "b": 2}
    assert room.grant("b", before=2, asked=4).steps == 0
    # a view asked for after the release is the truth again
    room.release("b", after=2)
    room.observe(HostView(cpus=6, vms={"a": 3, "b": 2}), 6, room.ticket())
    assert room.commitments() == {"a": 3, "b": 2}


def test_a_view_older_than_one_taken_is_ignored() -> None:
    room = host(8, a=2)
    old = room.ticket()
    room.release("a", after=2)
    assert room.observe(HostView(cpus=8, vms={"a": 2, "c": 3}), 8, room.ticket())
    assert not room.observe(HostView(cpus=8, vms={"a": 2}), 8, old)  # would drop c, which started since
    assert room.commitments() == {"a": 2, "c": 3}


def test_an_ignored_old_view_still_brings_a_capacity_lowered_since() -> None:
    """The capacity is today's [[host]] rule, not the view's: a grow judged after a late answer to an old view
    request must not be granted room of the capacity before the rule was lowered (found by the hypothesis
    property in test_ledger.py)."""
    room = host(8, a=2, b=2)
    old = room.ticket()
    room.release("a", after=2)
    assert room.observe(HostView(cpus=8, vms={"a": 2, "b": 2}), 8, room.ticket())
    assert not room.observe(HostView(cpus=8, vms={"a": 2}), 4, old)
    assert room.grant("b", 2, 4).size == 2  # 4 − a's 2: no room above the lowered capacity


def test_a_release_unsure_of_the_count_keeps_the_room_until_a_newer_view() -> None:
    room = host(6, a=2, b=1)
    room.grant("a", before=2, asked=4)
    room.release("a", after=None)  # a plug timed out: it may still land
    assert room.commitments()["a"] == 4
    room.observe(HostView(cpus=6, vms={"a": 3, "b": 1}), 6, room.ticket())
    assert room.commitments()["a"] == 3


def test_a_restarted_actuator_rebuilds_what_is_committed_from_a_fresh_view() -> None:
    before = host(6, a=2, b=2)
    before.grant("a", before=2, asked=4)  # under way when the actuator died
    after = Reservations("h")
    assert not after.known
    with pytest.raises(ValueError, match="no host view"):
        after.grant("b", before=2, asked=3)
    after.observe(HostView(cpus=6, vms={"a": 3, "b": 2, "unmanaged": 1}), 6, after.ticket())
    assert after.committed() == 6  # what runs, managed or not; nothing remembered
    assert after.grant("b", before=2, asked=3).steps == 0


def test_a_capacity_lowered_under_running_vms_strands_nothing() -> None:
    room = host(6, a=4, b=4)  # 8 committed on 6
    assert room.grant("a", before=4, asked=5).steps == 0  # no grow while above
    room.release("b", after=2)  # a shrink passes, and frees its cores at once
    assert room.committed() == 6 and room.grant("a", before=4, asked=5).steps == 0
    room.release("b", after=1)
    grant = room.grant("a", before=4, asked=6)
    assert (grant.size, grant.committed) == (5, 5)


def test_a_vm_unknown_to_the_view_counts_from_its_grant() -> None:
    room = host(4, a=2)
    assert room.grant("new", before=1, asked=3).size == 2  # others 2, itself at 1: room for 1 more
    assert room.committed() == 4


# -- the command ledger's use of it ----------------------------------------------------------------------------


def command(vm: str = "a", target: int = 5, seen: int = 2) -> ScaleCommand:
    return ScaleCommand(
        id=f"c-{vm}-{target}",
        time=0.0,
        host="h",
        vm=vm,
        target_vcpus=target,
        seen_vcpus=seen,
        decider="d",
        reason="r",
        expires_at=1e9,
    )


def ledger() -> Ledger[str]:
    return Ledger(LedgerRules(actuator="act", host="h", bounds=lambda vm: Bounds(1, 8)))


def test_without_a_host_view_nothing_is_held_and_shrinks_are_never_judged() -> None:
    book = ledger()
    assert book.room(command(), Plan(1, 3), before=2) == (Plan(1, 3), None)  # a driver that reports no host
    book.host.observe(HostView(cpus=2, vms={"a": 2}), 2, book.host.ticket())
    assert book.room(command(target=1), Plan(-1, 1), before=2) == (Plan(-1, 1), None)
    assert book.room(command(target=2), Plan(0, 0), before=2) == (Plan(0, 0), None)


def test_a_partial_grant_is_a_host_full_result_with_the_size_reached_and_the_host_numbers() -> None:
    book = ledger()
    book.host.observe(HostView(cpus=6, vms={"a": 2, "b": 3}), 6, book.host.ticket())
    cmd = command(target=5)
    decided = book.plan(cmd, VmView(vm="a", online_vcpus=2, min_vcpus=1, max_vcpus=8), 0.0).decision
    assert decided == Plan(1, 3)
    cut, grant = book.room(cmd, decided, before=2)
    assert cut == Plan(1, 1) and grant is not None
    book.ended("a", 3)
    result = book.result(cmd, 1.0, 0.1, 2, 3, grant.refusal(), (1, 8), grant)
    assert (result.ok, result.error_code, result.vcpus_before, result.vcpus_after) == (False, ErrorCode.HOST_FULL, 2, 3)
    assert result.error == "granted 1 of 3 vCPUs asked: host h has capacity 6, 5 committed"
    assert (result.host_capacity_vcpus, result.host_committed_vcpus, result.retry_after) == (6, 5, 2.0)
    assert book.host.committed() == 6


def test_a_grow_that_fits_not_even_one_vcpu_is_refused_without_a_step() -> None:
    book = ledger()
    book.host.observe(HostView(cpus=4, vms={"a": 2, "b": 2}), 4, book.host.ticket())
    cut, grant = book.room(command(target=3), Plan(1, 1), before=2)
    assert cut == Plan(1, 0) and grant is not None
    result = book.result(command(target=3), 1.0, 0.0, 2, 2, grant.refusal(), (1, 8), grant)
    assert (result.ok, result.error_code, result.retry_after) == (False, ErrorCode.HOST_FULL, 2.0)
    assert result.error == "granted 0 of 1 vCPUs asked: host h has capacity 4, 4 committed"
