"""The host's memory in the actuator (services/actuator/reservations.py, ledger.py): a memory grow gets what fits under
the host's memory capacity (all, part of it on the hypervisor's step, or nothing: ``host-full``), a shrink is never
held, a grant stays reserved until its command ends, and a driver that reports no memory leaves memory unarbitrated."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.actuator.checks import Bounds
from services.actuator.drivers.base import HostView
from services.actuator.ledger import (
    MEMORY_LANE,
    Acknowledge,
    Acknowledged,
    Done,
    Execute,
    Executed,
    HostRead,
    Ledger,
    LedgerRules,
    Mark,
    Marked,
    MemoryRead,
    PauseRead,
    ReadHost,
    ReadPause,
    ReadVm,
    Recounted,
    Reread,
    Store,
    Stored,
    Unmark,
    Unmarked,
)
from services.actuator.memory_checks import MemoryPlan
from services.actuator.reservations import Grant, Reservations
from shared.messages import ErrorCode, Resource, ScaleResult, required_version
from shared.units import GIB, MIB
from tests.unit.test_actuator_memory import STEP, memory_command, memory_view


def memory_host(capacity: int | None, **vms: int) -> Reservations:
    room = Reservations("h", Resource.MEMORY)
    view = HostView(cpus=8, vms={}, memory_bytes=capacity, vm_memory=vms)
    room.observe(view, capacity, room.ticket())
    return room


def test_a_memory_grow_gets_all_part_on_the_step_or_nothing() -> None:
    whole = memory_host(16 * GIB, a=4 * GIB, b=8 * GIB).grant("a", 4 * GIB, 6 * GIB, STEP)
    assert whole.size == 6 * GIB and whole.refusal() is None
    # 16 GiB - 8 GiB - 1 MiB of c leaves a 8 GiB - 1 MiB room: cut down to the 2 MiB step, not to the byte
    room = memory_host(16 * GIB, a=4 * GIB, b=8 * GIB, c=MIB)
    part = room.grant("a", 4 * GIB, 10 * GIB, STEP)
    assert part == Grant("h", "a", 4 * GIB, 10 * GIB, 8 * GIB - 2 * MIB, 16 * GIB, 12 * GIB + MIB, Resource.MEMORY)
    refusal = part.refusal()
    assert refusal is not None and refusal.code is ErrorCode.HOST_FULL
    # sizes in the message are rounded to people's units; the result carries the bytes
    assert refusal.message == (
        "granted 4GiB of 6GiB of memory asked: host h has memory capacity 16GiB, 12GiB committed"
    )
    assert room.committed() == 16 * GIB - MIB  # the grant is reserved at once
    none = room.grant("b", 8 * GIB, 9 * GIB, STEP)
    assert none.size == 8 * GIB and none.steps == 0 and none.refusal() is not None


def test_two_memory_grows_never_both_take_the_last_gibibyte_and_a_release_frees_it() -> None:
    room = memory_host(10 * GIB, a=4 * GIB, b=4 * GIB)
    first = room.grant("a", 4 * GIB, 6 * GIB, STEP)
    second = room.grant("b", 4 * GIB, 6 * GIB, STEP)
    assert (first.size, second.size) == (6 * GIB, 4 * GIB)
    room.release("a", 5 * GIB)  # a's device stopped short: what it reached is what it holds
    assert room.commitments() == {"a": 5 * GIB, "b": 4 * GIB}
    assert room.grant("b", 4 * GIB, 6 * GIB, STEP).size == 5 * GIB


def test_a_host_view_without_memory_leaves_memory_unknown() -> None:
    assert not memory_host(None, a=GIB).known


def ledger() -> Ledger[str]:
    return Ledger(LedgerRules(actuator="act", host="h", bounds=lambda vm: Bounds(1, 8)))


def observe(book: Ledger[str], view: HostView, capacity: int | None) -> None:
    book.host_memory.observe(view, capacity, book.host_memory.ticket())


def test_room_cuts_a_memory_grow_and_never_holds_a_shrink() -> None:
    book = ledger()
    grow = memory_command("m", 8 * GIB)
    # no view yet (or a driver that reports no memory): as it is
    assert book.room(grow, MemoryPlan(8 * GIB, 1), 4 * GIB, STEP) == (MemoryPlan(8 * GIB, 1), None)
    observe(book, HostView(cpus=8, vms={}, memory_bytes=8 * GIB, vm_memory={"a": 4 * GIB, "b": 4 * GIB}), 8 * GIB)
    cut, grant = book.room(grow, MemoryPlan(8 * GIB, 1), 4 * GIB, STEP)
    assert cut == MemoryPlan(4 * GIB, 0) and grant is not None and grant.steps == 0  # nothing fits: no request
    shrink = memory_command("s", 2 * GIB)
    assert book.room(shrink, MemoryPlan(2 * GIB, -1), 4 * GIB, STEP) == (MemoryPlan(2 * GIB, -1), None)


@dataclass
class Shell:
    """Carries out the ledger's actions on VM a's memory beside VM b's, on a host of ``capacity`` bytes; the device
    moves at once to what it is asked."""

    ledger: Ledger[str]
    capacity: int | None
    memory: int = 4 * GIB
    others: dict[str, int] = field(default_factory=lambda: {"b": 4 * GIB})
    log: list[ScaleResult] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    def run(self) -> ScaleResult:
        key = "a" + MEMORY_LANE
        while not isinstance(action := self.ledger.next_action(key, 0.0), Done):
            self.actions.append(type(action).__name__)
            self.ledger.outcome(key, self.carry_out(action), 0.0, 0.0)
        return self.log[-1]

    def carry_out(self, action: object):  # type: ignore[no-untyped-def]
        if isinstance(action, ReadPause):
            return PauseRead(None, 0.0)
        if isinstance(action, ReadVm):
            return MemoryRead(memory_view(self.memory, GIB))
        if isinstance(action, ReadHost):
            view = HostView(cpus=8, vms={}, memory_bytes=self.capacity, vm_memory={"a": self.memory, **self.others})
            self.ledger.host_memory.observe(view, self.capacity, self.ledger.host_memory.ticket())
            return HostRead()
        if isinstance(action, Mark):
            return Marked()
        if isinstance(action, Execute):
            assert isinstance(action.plan, MemoryPlan)
            self.memory = action.plan.target
            return Executed(self.memory)
        if isinstance(action, Reread):
            return Recounted(self.memory)
        if isinstance(action, Store):
            self.log.append(action.result)
            return Stored(action.result)
        if isinstance(action, Unmark):
            return Unmarked()
        assert isinstance(action, Acknowledge)
        return Acknowledged(action.handles)


def test_a_memory_grow_past_the_hosts_memory_is_cut_short_host_full_with_the_host_numbers() -> None:
    shell = Shell(ledger(), capacity=10 * GIB)
    shell.ledger.receive(memory_command("m1", 8 * GIB), "h1")
    result = shell.run()
    assert "ReadHost" in shell.actions  # judged on the host as it is now
    assert (result.ok, result.error_code, result.retry_after) == (False, ErrorCode.HOST_FULL, 2.0)
    assert (result.memory_before_bytes, result.memory_after_bytes, result.target_memory_bytes) == (
        4 * GIB,
        6 * GIB,
        8 * GIB,
    )
    assert (result.host_capacity_memory_bytes, result.host_committed_memory_bytes) == (10 * GIB, 8 * GIB)
    assert result.host_capacity_vcpus is None and required_version(result) == 2
    # released at its end: a holds what it reached, the room is all taken
    assert shell.ledger.host_memory.commitments() == {"a": 6 * GIB, "b": 4 * GIB}
    assert shell.ledger.holding("a" + MEMORY_LANE) is None


def test_a_memory_grow_that_fits_passes_and_one_with_no_room_takes_no_step() -> None:
    fits = Shell(ledger(), capacity=16 * GIB)
    fits.ledger.receive(memory_command("m1", 8 * GIB), "h1")
    result = fits.run()
    assert result.ok and result.memory_after_bytes == 8 * GIB and result.host_capacity_memory_bytes == 16 * GIB
    full = Shell(ledger(), capacity=8 * GIB)
    full.ledger.receive(memory_command("m2", 6 * GIB), "h1")
    refused = full.run()
    assert refused.error_code is ErrorCode.HOST_FULL and refused.memory_after_bytes == 4 * GIB
    assert "Execute" not in full.actions and "Mark" not in full.actions


def test_a_memory_shrink_on_a_full_host_is_never_held_and_frees_its_room() -> None:
    shell = Shell(ledger(), capacity=8 * GIB, others={"b": 6 * GIB})  # committed 10 GiB over 8: a capacity lowered
    shell.ledger.receive(memory_command("m1", 2 * GIB), "h1")
    result = shell.run()
    assert result.ok and result.memory_after_bytes == 2 * GIB and result.host_capacity_memory_bytes is None
    assert "ReadHost" not in shell.actions
    assert shell.ledger.host_memory.commitments()["a"] == 2 * GIB  # released at what it reached


def test_without_the_hosts_memory_a_memory_grow_is_not_held() -> None:
    shell = Shell(ledger(), capacity=None)
    shell.ledger.receive(memory_command("m1", 12 * GIB), "h1")
    result = shell.run()
    assert result.ok and result.memory_after_bytes == 12 * GIB and result.host_capacity_memory_bytes is None


def test_memory_room_and_vcpu_room_are_apart() -> None:
    shell = Shell(ledger(), capacity=10 * GIB)
    shell.ledger.host.observe(HostView(cpus=2, vms={"a": 2}), 2, shell.ledger.host.ticket())  # vCPUs full
    shell.ledger.receive(memory_command("m1", 6 * GIB), "h1")
    assert shell.run().ok  # a full host in vCPUs holds no memory grow
    assert shell.ledger.host.commitments() == {"a": 2}


def test_once_the_driver_is_known_to_report_no_memory_a_memory_grow_reads_no_host() -> None:
    shell = Shell(ledger(), capacity=None)
    shell.ledger.host.observe(HostView(cpus=8, vms={"a": 2}), 8, shell.ledger.host.ticket())  # a view, no memory
    shell.ledger.host_memory.observe(HostView(cpus=8, vms={"a": 2}), None, shell.ledger.host_memory.ticket())
    shell.ledger.receive(memory_command("m1", 6 * GIB), "h1")
    assert shell.run().ok and "ReadHost" not in shell.actions


def test_a_view_that_missed_the_memory_of_a_driver_that_reports_it_is_read_again_before_a_grow() -> None:
    shell = Shell(ledger(), capacity=10 * GIB)
    observe(shell.ledger, HostView(cpus=8, vms={}, memory_bytes=10 * GIB, vm_memory={"a": 4 * GIB}), 10 * GIB)
    shell.ledger.host.observe(HostView(cpus=8, vms={"a": 2}), 8, shell.ledger.host.ticket())
    # then a view in which some VM's memory could not be read: no memory in it, but the driver does report memory
    observe(shell.ledger, HostView(cpus=8, vms={"a": 2}), None)
    assert not shell.ledger.host_memory.known and shell.ledger.host_memory.reported
    shell.ledger.receive(memory_command("m1", 8 * GIB), "h1")
    result = shell.run()
    assert "ReadHost" in shell.actions  # a fresh view, which has the memory again: the grow is judged on it
    assert result.error_code is ErrorCode.HOST_FULL and result.memory_after_bytes == 6 * GIB
