"""The actuator's command ledger (services/actuator/ledger.py), tested directly and with hypothesis.

The direct tests carry out the ledger's actions with a small executor and check the order it gives (a grow, a
refusal, a duplicate, an expired command, a driver failure, a host-full partial grant...). The main property drives
the ledger as the service does, through any interleaving of stored copies, deliveries and redeliveries, worker
actions (one hot-plug call at a time), failed calls, worker failures, actuator restarts, host views read and taken
late, capacity changes and the passing of time, against a model of the event log and the host: once every copy is
acknowledged, every command has exactly one result; and no grow is granted room that takes the host's true
commitment above its capacity, nor steps beyond its grant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from services.actuator.checks import Bounds, Plan, Refusal
from services.actuator.drivers.base import HostView, VmView
from services.actuator.ledger import (
    Acknowledge,
    Acknowledged,
    Action,
    Done,
    Execute,
    Executed,
    Failed,
    FindLeftOver,
    Found,
    HostRead,
    Ignore,
    Ledger,
    LedgerRules,
    LeftOver,
    LookUp,
    Mark,
    Marked,
    Open,
    Opened,
    Outcome,
    PauseRead,
    Planned,
    ReadHost,
    ReadPause,
    ReadVm,
    Recall,
    Recalled,
    Recounted,
    Reread,
    Settle,
    Settled,
    StartAction,
    StartOutcome,
    StartWorker,
    Store,
    Stored,
    TakeCommands,
    Terminate,
    Unmark,
    Unmarked,
    VmRead,
    Wait,
    Watching,
    WatchPauses,
)
from shared.messages import ErrorCode, ScaleCommand, ScaleResult

VMS = ("a", "b")
ANSWERED = "it is answered or under way"
CAPACITIES = (4, 5, 6, 7, 8, 10)


def rules(
    max_changes: int = 6, window_s: float = 60.0, bounds: dict[str, Bounds] | None = None, host_views: bool = True
) -> LedgerRules:
    per_vm = bounds or {}
    return LedgerRules(
        actuator="act",
        host="h",
        bounds=lambda vm: per_vm.get(vm, Bounds(1, 8)),
        max_changes=max_changes,
        rate_window_s=window_s,
        host_views=host_views,
    )


def command(
    command_id: str,
    vm: str = "a",
    *,
    at: float = 0.0,
    target: int = 3,
    seen: int = 2,
    ttl: float = 1e9,
    decider: str = "d",
    term: int = 0,
) -> ScaleCommand:
    return ScaleCommand(
        id=command_id,
        time=at,
        host="h",
        vm=vm,
        target_vcpus=target,
        seen_vcpus=seen,
        decider=decider,
        reason="r",
        expires_at=at + ttl,
        term=term,
    )


def view(vcpus: int, vm: str = "a") -> VmView:
    return VmView(vm=vm, online_vcpus=vcpus, min_vcpus=1, max_vcpus=8)


# -- direct -----------------------------------------------------------------------------------------------------


@dataclass
class Shell:
    """A small executor for the direct tests: it carries out each action the ledger gives on a host of its own (a
    VM's count, the host's other VMs and CPUs, an event log) and records each action's name."""

    ledger: Ledger[str]
    vcpus: dict[str, int] = field(default_factory=lambda: {"a": 2})
    others: int = 0  # vCPUs of the host's VMs no command moves
    cpus: int = 16  # the host's capacity
    broken: ErrorCode | None = None  # every hot-plug call fails with this, the VM unchanged
    log: list[ScaleResult] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    markers: set[str] = field(default_factory=set)
    now: float = 0.0

    def run(self, vm: str = "a") -> list[str]:
        names = []
        while not isinstance(action := self.ledger.next_action(vm, self.now), Done):
            assert self.ledger.next_action(vm, self.now) == action  # asking says what to do, and changes nothing
            names.append(type(action).__name__)
            self.ledger.outcome(vm, self.carry_out(action), self.now, self.now)
        return names

    def carry_out(self, action: Action[str]) -> Outcome[str]:
        if isinstance(action, LookUp):
            return Found(any(r.command_id == action.command.id for r in self.log))
        if isinstance(action, ReadPause):
            return PauseRead(None, self.now)
        if isinstance(action, ReadVm):
            return VmRead(view(self.vcpus[action.command.vm], action.command.vm))
        if isinstance(action, ReadHost):
            seen = HostView(cpus=self.cpus, vms={**self.vcpus, "x": self.others})
            self.ledger.host.observe(seen, self.cpus, self.ledger.host.ticket())
            return HostRead()
        if isinstance(action, Mark):
            self.markers.add(action.command.id)
            return Marked()
        if isinstance(action, Execute):
            if self.broken is not None:
                return Failed(Refusal(self.broken, "the guest said no"))
            assert isinstance(action.plan, Plan)
            self.vcpus[action.command.vm] += action.plan.direction * action.plan.steps
            return Executed(self.vcpus[action.command.vm])
        if isinstance(action, Reread):
            return Recounted(self.vcpus[action.command.vm])
        if isinstance(action, Store):
            self.log.append(action.result)
            return Stored(action.result)
        if isinstance(action, Unmark):
            self.markers.remove(action.command.id)
            return Unmarked()
        assert isinstance(action, Acknowledge)
        self.acked += action.handles
        return Acknowledged(action.handles)


GROW = ["ReadPause", "ReadVm", "ReadHost", "Mark", "Execute", "Store", "Unmark", "Acknowledge"]


def test_a_grow_is_admitted_read_judged_on_the_host_marked_executed_stored_and_acknowledged() -> None:
    shell = Shell(Ledger(rules()))
    assert shell.ledger.receive(command("c1", target=4), "m1") == StartWorker("a")
    assert shell.run() == GROW
    (result,) = shell.log
    assert result.ok and (result.vcpus_before, result.vcpus_after, result.target_vcpus) == (2, 4, 4)
    assert (result.allowed_min_vcpus, result.allowed_max_vcpus, result.host_capacity_vcpus) == (1, 8, 16)
    assert shell.acked == ["m1"] and not shell.markers and shell.ledger.in_flight() == 0
    assert shell.ledger.changes("a") == [0.0] and shell.ledger.host.commitments()["a"] == 4
    assert shell.ledger.receive(command("c1", target=4), "m2") == Ignore(command("c1", target=4), ANSWERED, ("m2",))


def test_a_shrink_is_never_judged_on_the_host_nor_a_grow_when_the_driver_reports_no_host() -> None:
    shell = Shell(Ledger(rules()))
    shell.ledger.receive(command("c1", target=1), "m1")
    assert shell.run() == ["ReadPause", "ReadVm", "Mark", "Execute", "Store", "Unmark", "Acknowledge"]
    shell = Shell(Ledger(rules(host_views=False)))
    shell.ledger.receive(command("c1", target=4), "m1")
    assert shell.run() == ["ReadPause", "ReadVm", "Mark", "Execute", "Store", "Unmark", "Acknowledge"]
    assert shell.log[0].ok and shell.log[0].host_capacity_vcpus is None


def test_a_command_refused_by_a_check_is_answered_with_the_count_read_again_and_never_executed() -> None:
    shell = Shell(Ledger(rules()))
    shell.ledger.receive(command("c1", target=9), "m1")
    assert shell.run() == ["ReadPause", "ReadVm", "Reread", "Store", "Acknowledge"]
    (result,) = shell.log
    assert result.error_code is ErrorCode.OUT_OF_BOUNDS and (result.vcpus_before, result.vcpus_after) == (2, 2)
    assert (result.allowed_min_vcpus, result.allowed_max_vcpus, result.retry_after) == (1, 8, 0)
    shell.ledger.receive(command("c2", target=3, seen=1), "m2")  # decided on a view that is gone
    assert shell.run() == ["ReadPause", "ReadVm", "Reread", "Store", "Acknowledge"]
    assert shell.log[1].error_code is ErrorCode.STALE_VIEW and shell.vcpus == {"a": 2}


def test_an_expired_command_is_refused_before_the_vm_is_even_read() -> None:
    shell = Shell(Ledger(rules()), now=100.0)
    shell.ledger.receive(command("c1", at=50.0, ttl=10.0), "m1")
    assert shell.run() == ["ReadPause", "Store", "Acknowledge"]
    (result,) = shell.log
    assert result.error_code is ErrorCode.EXPIRED and result.vcpus_before is None and result.time == 100.0
    assert shell.acked == ["m1"]


def test_a_driver_failure_is_the_result_with_the_count_read_again_and_a_back_off() -> None:
    shell = Shell(Ledger(rules()), broken=ErrorCode.GUEST_REFUSED)
    shell.ledger.receive(command("c1", target=4), "m1")
    assert shell.run() == [*GROW[:5], "Reread", "Store", "Unmark", "Acknowledge"]
    (result,) = shell.log
    assert result.error_code is ErrorCode.GUEST_REFUSED and (result.vcpus_before, result.vcpus_after) == (2, 2)
    assert result.retry_after == 30 and shell.ledger.changes("a") == []
    # the step may still land: the room granted stays held until a host view shows the truth
    assert shell.ledger.host.commitments()["a"] == 4


def test_a_grow_on_a_nearly_full_host_takes_what_fits_and_says_host_full() -> None:
    shell = Shell(Ledger(rules()), vcpus={"a": 2}, others=3, cpus=6)
    shell.ledger.receive(command("c1", target=5), "m1")
    assert shell.run() == [*GROW[:5], "Reread", "Store", "Unmark", "Acknowledge"]
    (result,) = shell.log
    assert (result.error_code, result.vcpus_before, result.vcpus_after) == (ErrorCode.HOST_FULL, 2, 3)
    assert (result.host_capacity_vcpus, result.host_committed_vcpus, result.retry_after) == (6, 5, 2.0)
    assert shell.ledger.changes("a") == [0.0]  # a partial grant is a change
    shell.ledger.receive(command("c2", target=5, seen=3), "m2")  # now nothing fits: no step at all
    assert shell.run() == ["ReadPause", "ReadVm", "ReadHost", "Reread", "Store", "Acknowledge"]
    assert (shell.log[1].error_code, shell.log[1].vcpus_after) == (ErrorCode.HOST_FULL, 3)


def test_a_second_copy_is_held_while_the_first_is_under_way_and_acknowledged_with_it() -> None:
    shell = Shell(Ledger(rules()))
    first = command("c1")
    assert shell.ledger.receive(first, "m1") == StartWorker("a")
    assert isinstance(shell.ledger.next_action("a", 0.0), ReadPause)
    assert shell.ledger.receive(first, "m2") == Ignore(first, ANSWERED)  # held: acknowledged with the original
    assert shell.run() == GROW
    assert shell.acked == ["m1", "m2"] and [r.command_id for r in shell.log] == ["c1"]
    assert shell.ledger.receive(first, "m3") == Ignore(first, ANSWERED, ("m3",))  # answered: acknowledged now
    assert shell.ledger.next_action("a", 1.0) == Done()


def test_a_copy_arriving_while_a_duplicate_is_acknowledged_is_held_and_acknowledged_next() -> None:
    ledger: Ledger[str] = Ledger(rules())
    shell = Shell(ledger, now=1000.0)
    old = command("c1", at=0.0)
    shell.log.append(ledger.result(old, 5.0, 0.0, 2, 3, None))  # answered long ago: not in the memory
    ledger.receive(old, "m1")
    ledger.outcome("a", shell.carry_out(ledger.next_action("a", 1000.0)), 1000.0, 0.0)
    action = ledger.next_action("a", 1000.0)
    assert action == Acknowledge(old, ("m1",), duplicate="the event log has its result")
    assert ledger.receive(old, "m2") == Ignore(old, ANSWERED)  # during the ack: held
    ledger.outcome("a", Acknowledged(("m1",)), 1000.0, 0.0)
    assert ledger.next_action("a", 1000.0) == Acknowledge(old, ("m2",))
    ledger.outcome("a", Acknowledged(("m2",)), 1000.0, 0.0)
    assert ledger.next_action("a", 1000.0) == Done()
    assert ledger.receive(old, "m3") == StartWorker("a")  # not pending any more: looked up again


def test_an_older_command_waiting_behind_a_newer_one_is_superseded() -> None:
    shell = Shell(Ledger(rules()), now=5.0)
    older, newer = command("c1"), command("c2", target=4)
    assert shell.ledger.receive(older, "m1") == StartWorker("a")
    assert shell.ledger.receive(newer, "m2") == Wait()
    assert shell.run() == ["Store", "Acknowledge", *GROW]
    superseded, done = shell.log
    assert superseded.error_code is ErrorCode.SUPERSEDED and superseded.retry_after == 0
    assert superseded.command_id == "c1" and superseded.time == 5.0 and superseded.vcpus_before is None
    assert done.command_id == "c2" and done.ok and shell.acked == ["m1", "m2"]


def test_a_command_older_than_the_memory_is_looked_up_in_the_log_and_found_there_is_a_duplicate() -> None:
    shell = Shell(Ledger(rules()), now=1000.0)
    old = command("c1", at=0.0)
    shell.log.append(Ledger[str](rules()).result(old, 5.0, 0.0, 2, 3, None))  # answered before a restart
    shell.ledger.receive(old, "m")
    assert shell.ledger.next_action("a", 1000.0) == LookUp(old, since=-60.0)
    assert shell.run() == ["LookUp", "Acknowledge"]
    assert shell.acked == ["m"] and len(shell.log) == 1
    fresh = command("c2", at=990.0)
    shell.ledger.receive(fresh, "m2")
    assert isinstance(shell.ledger.next_action("a", 1000.0), ReadPause)  # the memory knows: no look-up
    unseen = command("c3", at=0.0, target=2, seen=2)
    shell.ledger.receive(unseen, "m3")
    shell.run()
    assert [r.command_id for r in shell.log] == ["c1", "c2", "c3"]


def test_a_restart_recalls_every_answer_the_memory_is_trusted_with() -> None:
    """A command stamped at the memory's edge (``keep_s - skew_s`` ago) is not looked up in the log: the memory is
    trusted with it. Its answer may carry a time up to ``skew_s`` earlier (the actuator's clock behind the
    decider's), so a restarted actuator reads back from ``keep_s + skew_s`` ago and a copy is a duplicate."""
    r, now = rules(), 1000.0
    edge = command("c1", at=now - r.keep_s + r.skew_s)
    log = [Ledger[str](r).result(edge, edge.time - r.skew_s, 0.0, 2, 3, None)]
    restarted: Ledger[str] = Ledger(r)
    since = restarted.recall_since(now)
    restarted.recall(x for x in log if x.time >= since)
    assert restarted.look_up_since(edge, now) is None
    assert isinstance(restarted.receive(edge, "copy"), Ignore)


def test_a_failed_worker_forgets_its_commands_so_their_redeliveries_are_new_and_releases_its_room() -> None:
    ledger: Ledger[str] = Ledger(rules())
    shell = Shell(ledger)
    first, second = command("c1", target=4), command("c2")
    ledger.receive(first, "m1")
    ledger.receive(second, "m2")
    ledger.receive(first, "m1 again")
    while not isinstance(action := ledger.next_action("a", 0.0), Store):  # superseded: stored, then a failure
        ledger.outcome("a", shell.carry_out(action), 0.0, 0.0)
    ledger.abandon("a")
    assert ledger.next_action("a", 0.0) == Done()
    assert ledger.receive(first, "m1 later") == StartWorker("a")
    assert ledger.receive(second, "m2 later") == Wait()
    ledger.abandon("a")
    ledger.receive(first, "m1 at last")
    while not isinstance(action := ledger.next_action("a", 0.0), Execute):  # granted room, then the worker fails
        ledger.outcome("a", shell.carry_out(action), 0.0, 0.0)
    assert ledger.host.commitments()["a"] == 4
    ledger.abandon("a")
    assert ledger.host.commitments()["a"] == 4  # released unsure of the count: a step may still land
    assert ledger.in_flight() == 0


def test_plan_applies_the_vms_own_bounds_and_the_rate_limit_only_to_changes() -> None:
    ledger: Ledger[str] = Ledger(rules(max_changes=1, bounds={"a": Bounds(2, 3)}))
    assert ledger.plan(command("c", target=4), view(2), 0.0).decision.code is ErrorCode.OUT_OF_BOUNDS  # type: ignore[union-attr]
    assert ledger.plan(command("c", target=3), view(2), 0.0) == Planned(Plan(1, 1), (2, 3))
    assert ledger.plan(command("c", vm="b", target=8), view(2, "b"), 0.0).sizes == (1, 8)
    ledger.changed("a", 0.0)
    limited = ledger.plan(command("c", target=3), view(2), 10.0).decision
    assert isinstance(limited, Refusal) and limited.code is ErrorCode.RATE_LIMITED and limited.retry_at == 60.0
    assert ledger.plan(command("c", target=2), view(2), 10.0).decision == Plan(0, 0)  # nothing to change: no limit


def test_admit_raises_the_term_and_refuses_older_ones() -> None:
    ledger: Ledger[str] = Ledger(rules())
    assert ledger.admit(command("c1", decider="ha", term=3), 0.0) is None
    assert ledger.terms == {"ha": 3}
    refused = ledger.admit(command("c2", decider="ha", term=2), 0.0)
    assert refused is not None and refused.code is ErrorCode.STALE_TERM
    assert ledger.admit(command("c3", ttl=-1.0), 0.0) is not None
    ledger.learn_term("ha", 1)
    assert ledger.terms == {"ha": 3}


def test_a_command_left_in_progress_is_settled_as_things_are() -> None:
    ledger: Ledger[str] = Ledger(rules())
    done = ledger.settled(command("c1", target=4), before=2, now_size=4, now=9.0, duration_s=0.5)
    assert done.ok and (done.vcpus_before, done.vcpus_after) == (2, 4)
    part = ledger.settled(command("c2", target=4), before=2, now_size=3, now=9.0, duration_s=0.5)
    assert not part.ok and part.error_code is ErrorCode.UNKNOWN and "2 -> 3 vCPUs of the 4" in (part.error or "")


def test_the_intake_terminates_what_is_no_command_and_starts_one_worker_per_vm() -> None:
    ledger: Ledger[str] = Ledger(rules())
    assert ledger.receive(None, "garbled") == Terminate("garbled")  # never redelivered, no result
    assert ledger.receive(command("c1"), "m1") == StartWorker("a")
    assert ledger.receive(command("c2", vm="b"), "m2") == StartWorker("b")
    assert ledger.receive(command("c3"), "m3") == Wait()  # a's worker takes it in turn
    assert ledger.receive(command("c1"), "m1 again") == Ignore(command("c1"), ANSWERED)  # held


def _start_up(ledger: Ledger[str], log: list[ScaleResult], markers: dict[str, tuple[ScaleCommand, int]]) -> list[str]:
    """Carry out the ledger's start-up at clock time 1000 on an event log, progress markers and VMs ("a" at 3 vCPUs;
    reading "b" fails), one monotonic second per action; the actions' names."""
    names: list[str] = []
    while not isinstance(action := ledger.start_action(1000.0), TakeCommands):
        assert ledger.start_action(1000.0) == action  # asking changes nothing
        names.append(type(action).__name__)
        outcome: StartOutcome
        if isinstance(action, Open):
            outcome = Opened()
        elif isinstance(action, Recall):
            assert action.since == ledger.recall_since(1000.0)
            outcome = Recalled(tuple(r for r in log if r.time >= action.since))
        elif isinstance(action, FindLeftOver):
            outcome = LeftOver(tuple(markers.values()))
        elif isinstance(action, LookUp):
            outcome = Found(any(r.command_id == action.command.id for r in log))
        elif isinstance(action, Settle):
            vm = action.command.vm
            outcome = Settled(3) if vm == "a" else Failed(Refusal(ErrorCode.TIMEOUT, f"{vm} did not answer"))
        elif isinstance(action, Store):
            log.append(action.result)
            outcome = Stored(action.result)
        elif isinstance(action, Unmark):
            del markers[action.command.vm]
            outcome = Unmarked()
        else:
            assert isinstance(action, WatchPauses), action
            outcome = Watching()
        ledger.started(outcome, 1000.0, float(len(names)))
    return names


def test_a_fresh_actuator_opens_recalls_finds_no_marker_and_knows_the_pauses_before_any_command() -> None:
    ledger: Ledger[str] = Ledger(rules())
    assert _start_up(ledger, [], {}) == ["Open", "Recall", "FindLeftOver", "WatchPauses"]
    assert ledger.start_action(1000.0) == TakeCommands()


def test_a_restart_recalls_the_answers_then_settles_each_command_left_in_progress_or_only_unmarks_it() -> None:
    """Markers of a dead actuator: ``c1`` answered (it died before removing its marker) is only unmarked; ``c2``,
    whose VM moved 2 -> 3 of the 4 asked, is settled as things are; ``c3``'s VM cannot be read: its marker stays
    for the next start; ``c4``, older than the memory (the actuator was down longer than it reaches back), is looked
    up in the log, found, and only unmarked. Then the pauses, then commands: a copy of each answered one is a
    duplicate."""
    answered, moved = command("c1", "x", at=990.0, target=4), command("c2", at=995.0, target=4)
    unread, old = command("c3", "b", at=998.0), command("c4", "y", at=0.0)
    log = [Ledger[str](rules()).result(c, t, 0.5, 2, 4, None) for c, t in ((old, 5.0), (answered, 991.0))]
    markers = {"x": (answered, 2), "a": (moved, 2), "b": (unread, 2), "y": (old, 2)}
    ledger: Ledger[str] = Ledger(rules())
    assert _start_up(ledger, log, markers) == [
        *("Open", "Recall", "FindLeftOver"),
        *("Unmark", "Settle", "Store", "Unmark", "Settle", "LookUp", "Unmark", "WatchPauses"),
    ]
    settled = log[2]
    assert (settled.command_id, settled.ok, settled.error_code) == ("c2", False, ErrorCode.UNKNOWN)
    assert (settled.vcpus_before, settled.vcpus_after, settled.time) == (2, 3, 1000.0)
    assert settled.duration_s == 1.0  # from the marker's turn (after the Unmark, at 4) to the VM settled (at 5)
    assert len(log) == 3 and list(markers) == ["b"]  # c3 not settled: the next start tries again
    for copy in (answered, moved):
        assert ledger.receive(copy, "copy") == Ignore(copy, ANSWERED, ("copy",))


# -- properties -------------------------------------------------------------------------------------------------


@dataclass
class Worker:
    """A VM's worker in the model: it carries out the ledger's next action, a slow host view or a hot-plug step at
    a time."""

    started: float = 0.0  # when its command was admitted
    ticket: int | None = None  # a grow's host view: asked for with this ticket, answered with this snapshot
    snapshot: dict[str, int] = field(default_factory=dict)


@dataclass
class World:
    """The event log, the stream's unacknowledged copies, the host (its VMs, one of them unmanaged, and its
    capacity), and one actuator process."""

    commands: list[ScaleCommand]
    now: float = 0.0
    log: list[ScaleResult] = field(default_factory=list)
    unacked: dict[int, ScaleCommand] = field(default_factory=dict)  # stream sequence -> the copy stored there
    vcpus: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VMS, 2))
    unmanaged: dict[str, int] = field(default_factory=lambda: {"x": 1})  # no command moves it; it takes cores
    capacity: int = 6
    markers: dict[str, tuple[ScaleCommand, int]] = field(default_factory=dict)  # progress.py's, per VM
    workers: dict[str, Worker] = field(default_factory=dict)
    ledger: Ledger[int] = field(default_factory=lambda: Ledger(rules()))
    seq: int = 0
    # Changes made per VM, by time, with the ledger that made them (a restart forgets the rate history).
    changes: dict[str, list[float]] = field(default_factory=dict)
    views: list[tuple[int, dict[str, int]]] = field(default_factory=list)  # the metrics refresh's views in flight
    granted: int = 0  # grows granted room (at least one step)
    refused: int = 0  # grows granted less than they asked

    def snapshot(self) -> dict[str, int]:
        return {**self.vcpus, **self.unmanaged}

    def store(self, i: int) -> None:
        self.seq += 1
        template = self.commands[i % len(self.commands)]
        # A command is stamped when first stored; copies repeat it exactly.
        self.unacked[self.seq] = template

    def decide(self, i: int) -> None:
        """A decider orders a resize of a VM, decided on its count now, once the VM's last order is answered (so
        that most orders are carried out)."""
        vm = VMS[i % len(VMS)]
        answered = {r.command_id for r in self.log}
        if any(c.vm == vm and c.id not in answered for c in self.commands[1:]):
            return
        self.seq += 1
        target = max(1, min(8, self.vcpus[vm] + (1, 2, 3, -1, -2)[i // len(VMS) % 5]))
        order = command(f"d{self.seq}", vm, at=self.now, target=target, seen=self.vcpus[vm])
        self.commands.append(order)
        self.unacked[self.seq] = order

    def deliver(self, i: int) -> None:
        if not self.unacked:
            return
        seq = sorted(self.unacked)[i % len(self.unacked)]
        intake = self.ledger.receive(self.unacked[seq], seq)
        if isinstance(intake, Ignore):
            for handle in intake.handles:
                self.ack(handle)
        elif isinstance(intake, StartWorker):
            self.workers[intake.vm] = Worker()

    def ack(self, seq: int) -> None:
        self.unacked.pop(seq, None)

    # -- a worker: the ledger's next action, carried out as Actuator._carry_out does it ---------------------------

    def advance(self, i: int) -> None:
        if not self.workers:
            return
        vm = sorted(self.workers)[i % len(self.workers)]
        worker = self.workers[vm]
        action = self.ledger.next_action(vm, self.now)
        assert self.ledger.next_action(vm, self.now) == action  # asking changes nothing
        outcome = self.carry_out(vm, worker, action, i)
        if outcome is not None:
            self.ledger.outcome(vm, outcome, self.now, self.now)
            if isinstance(outcome, HostRead):
                self.judged(vm)

    def carry_out(self, vm: str, worker: Worker, action: Action[int], i: int) -> Outcome[int] | None:
        """What the action found; None: not yet (a host view or a hot-plug step under way)."""
        if isinstance(action, Done):
            del self.workers[vm]
            return None
        if isinstance(action, LookUp):
            return Found(any(r.command_id == action.command.id for r in self.log))
        if isinstance(action, ReadPause):
            worker.started = self.now
            return PauseRead(None, self.now)
        if isinstance(action, ReadVm):
            return VmRead(view(self.vcpus[vm], vm))
        if isinstance(action, ReadHost):
            # the host view is asked for now and answered later: as stale as a view can be
            if worker.ticket is None:
                worker.ticket, worker.snapshot = self.ledger.host.ticket(), self.snapshot()
                return None
            if i % 3:  # the driver answers slowly: other workers may grow and end meanwhile
                return None
            self.ledger.host.observe(HostView(cpus=self.capacity, vms=worker.snapshot), self.capacity, worker.ticket)
            worker.ticket = None
            return HostRead()
        if isinstance(action, Mark):
            self.markers[vm] = (action.command, action.before)
            return Marked()
        if isinstance(action, Execute):  # one step per turn
            assert isinstance(action.plan, Plan)
            self.vcpus[vm] += action.plan.direction
            if action.grant is not None:
                assert self.vcpus[vm] <= action.grant.size, "a step beyond the room granted"
            if self.vcpus[vm] != action.before + action.plan.direction * action.plan.steps:
                return None
            self.changes.setdefault(vm, []).append(worker.started)
            return Executed(self.vcpus[vm])
        if isinstance(action, Reread):
            return Recounted(self.vcpus[vm])
        if isinstance(action, Store):
            self.log.append(action.result)
            return Stored(action.result)
        if isinstance(action, Unmark):
            del self.markers[vm]
            return Unmarked()
        assert isinstance(action, Acknowledge)
        for seq in action.handles:
            self.ack(seq)
        return Acknowledged(action.handles)

    def judged(self, vm: str) -> None:
        """A grow was just judged on the host: the room it holds, and every grow's, fits the host as it truly is."""
        grant = self.ledger.holding(vm)
        assert grant is not None
        if grant.steps:
            self.granted += 1
            held = {other: g.size for other in self.workers if (g := self.ledger.holding(other)) is not None}
            true = {other: max(n, held.get(other, 0)) for other, n in self.snapshot().items()}
            assert sum(true.values()) <= self.capacity, (true, self.capacity, grant)
        if grant.size < grant.asked:
            self.refused += 1

    def step_fails(self, i: int) -> None:
        """A hot-plug call fails (timeout, not verified); an odd ``i``: it moved the VM all the same."""
        stepping = [vm for vm in sorted(self.workers) if isinstance(self.ledger.next_action(vm, self.now), Execute)]
        if not stepping:
            return
        vm = stepping[i % len(stepping)]
        action = self.ledger.next_action(vm, self.now)
        assert isinstance(action, Execute)
        if i % 2:
            self.vcpus[vm] += action.plan.direction
        self.ledger.outcome(vm, Failed(Refusal(ErrorCode.TIMEOUT, "the hypervisor did not answer")), self.now, self.now)

    # -- the host's side ------------------------------------------------------------------------------------------

    def look_for_metrics(self) -> None:
        self.views.append((self.ledger.host.ticket(), self.snapshot()))

    def see(self, i: int) -> None:
        """A view of the metrics refresh is answered (in any order), on the capacity in force now."""
        if self.views:
            ticket, seen = self.views.pop(i % len(self.views))
            self.ledger.host.observe(HostView(cpus=self.capacity, vms=seen), self.capacity, ticket)

    def fail(self, i: int) -> None:
        """A worker's I/O fails (the log, the bus): it forgets its commands, unacknowledged, and the room its command
        held is released unsure of the count, as the service's worker does."""
        if not self.workers:
            return
        vm = sorted(self.workers)[i % len(self.workers)]
        del self.workers[vm]
        self.ledger.abandon(vm)

    def restart(self) -> None:
        """A new actuator process: its start-up as its ledger orders it, carried out on the world (as
        Actuator._start_up does) before it takes any command."""
        self.ledger = Ledger(rules())
        self.workers.clear()
        self.views.clear()
        while not isinstance(action := self.ledger.start_action(self.now), TakeCommands):
            assert self.ledger.start_action(self.now) == action  # asking changes nothing
            self.ledger.started(self.start_up(action), self.now, self.now)
        assert not self.markers, self.markers  # each settled (no driver call fails here), or answered already
        self.changes.clear()

    def start_up(self, action: StartAction) -> StartOutcome:
        if isinstance(action, Open):
            return Opened()
        if isinstance(action, Recall):
            return Recalled(tuple(r for r in self.log if r.time >= action.since))
        if isinstance(action, FindLeftOver):
            return LeftOver(tuple(self.markers.values()))
        if isinstance(action, LookUp):
            return Found(any(r.command_id == action.command.id for r in self.log))
        if isinstance(action, Settle):
            return Settled(self.vcpus[action.command.vm])
        if isinstance(action, Store):
            self.log.append(action.result)
            return Stored(action.result)
        if isinstance(action, Unmark):
            del self.markers[action.command.vm]
            return Unmarked()
        assert isinstance(action, WatchPauses), action
        return Watching()

    def drain(self) -> None:
        """Redeliver and work until every copy is acknowledged."""
        for _ in range(10_000):
            if not self.unacked and not self.workers:
                return
            for i in range(len(self.unacked)):
                self.deliver(i)
            while self.workers:
                self.advance(0)
        raise AssertionError("copies left unacknowledged")


OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["store", "deliver", "advance", "work", "fail", "restart", "tick", "stepfail", "look", "see", "capacity"]
        ),
        st.integers(0, 50),
    ),
    max_size=80,
)


def make_commands(draw: st.DrawFn) -> list[ScaleCommand]:
    out = []
    for i in range(draw(st.integers(1, 6))):
        out.append(
            command(
                f"c{i}",
                draw(st.sampled_from(VMS)),
                at=0.0,
                target=draw(st.integers(1, 4)),
                seen=draw(st.integers(1, 4)),
                ttl=draw(st.sampled_from([1e9, 30.0])),
            )
        )
    return out


@st.composite
def worlds(draw: st.DrawFn) -> tuple[World, list[tuple[str, int]]]:
    return World(make_commands(draw)), draw(OPS)


def run(world: World, ops: list[tuple[str, int]], restarts: bool = True) -> None:
    for op, arg in ops:
        if op == "store":
            world.store(arg)
        elif op == "deliver":
            world.deliver(arg)
        elif op == "advance":
            world.advance(arg)
        elif op == "work":  # one worker's whole turn, or more (a grow is ten actions)
            for _ in range(2 * (1 + arg % 8)):
                world.advance(arg)
        elif op == "fail":
            world.fail(arg)
        elif op == "restart" and restarts:
            world.restart()
        elif op == "stepfail":
            world.step_fails(arg)
        elif op == "look":
            world.look_for_metrics()
        elif op == "see":
            world.see(arg)
        elif op == "decide":
            world.decide(arg)
        elif op == "fetch":  # every copy waiting, as the consumer's batch brings them
            for i in range(len(world.unacked)):
                world.deliver(i)
        elif op == "capacity":  # a [[host]] rule reloaded: raised, or lowered under running VMs
            world.capacity = CAPACITIES[arg % len(CAPACITIES)]
        elif op == "tick":
            # Short steps, and long ones that take answered ids out of the memory (and commands past expiry).
            world.now += (0.5, 5.0, 45.0, 700.0)[arg % 4]


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_any_interleaving_ends_with_exactly_one_result_per_command(case: tuple[World, list[tuple[str, int]]]) -> None:
    world, ops = case
    run(world, ops)
    world.drain()
    answered = [r.command_id for r in world.log]
    for command_id in set(answered):
        assert answered.count(command_id) == 1, (command_id, world.log)
    # ... and every command stored at least once has its result
    ever_stored = {world.commands[i % len(world.commands)].id for op, i in ops if op == "store"}
    assert ever_stored <= set(answered)
    for result in world.log:
        if result.error_code is ErrorCode.HOST_FULL:  # a grow cut short says how far it went, and the host's numbers
            assert result.retry_after == 2.0 and result.host_capacity_vcpus is not None, result
            assert result.vcpus_before is not None and result.vcpus_after is not None
            assert result.target_vcpus is not None and result.vcpus_before <= result.vcpus_after < result.target_vcpus


# Weighted towards what races for room: fresh orders, workers' steps, host views answered late, failed calls.
HOST_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            (
                *("decide", "decide", "decide", "fetch", "fetch", "advance", "advance", "advance", "work", "work"),
                *("look", "see", "see", "stepfail", "capacity", "capacity", "fail", "restart", "tick"),
            )
        ),
        st.integers(0, 50),
    ),
    min_size=20,
    max_size=100,
)


@settings(max_examples=300, deadline=None)
@given(HOST_OPS)
def test_no_grow_is_granted_room_above_the_capacity_and_every_order_has_one_result(ops: list[tuple[str, int]]) -> None:
    """The checks are the model's own (World.look and World.step, on the host's true counts); here: they ran."""
    world = World([command("c0")])
    run(world, ops)
    world.drain()
    answered = [r.command_id for r in world.log]
    assert len(answered) == len(set(answered))
    assert {c.id for c in world.commands[1:]} <= set(answered)


def test_two_grows_judged_together_on_the_last_cores_share_them_and_no_more() -> None:
    world = World([command("c0", "a", target=4), command("c1", "b", target=4)])  # 5 of 6 committed, x included
    run(world, [("store", 0), ("store", 1), ("deliver", 0), ("deliver", 1)])
    run(world, [("advance", 0)] * 3 + [("advance", 1)] * 3)  # both admitted, read, and asked for a host view
    run(world, [("advance", 0), ("advance", 3)])  # a is granted the last core, b nothing (3: b, answered now)
    world.drain()
    a, b = world.log
    assert (a.error_code, a.vcpus_before, a.vcpus_after, a.host_committed_vcpus) == (ErrorCode.HOST_FULL, 2, 3, 5)
    assert (b.error_code, b.vcpus_before, b.vcpus_after, b.host_committed_vcpus) == (ErrorCode.HOST_FULL, 2, 2, 6)
    assert (world.granted, world.refused) == (1, 2)


def test_a_copy_answered_before_a_restart_and_the_memory_is_found_in_the_log() -> None:
    world = World([command("c0"), command("c1", "b")])
    once = [("store", 0), ("deliver", 0), ("work", 6)]
    run(world, [*once, ("store", 0), ("tick", 3), ("restart", 0), ("deliver", 0), ("work", 6)])
    assert not world.unacked and [r.command_id for r in world.log] == ["c0"]
    # without a restart: a newer answer takes it out of the memory
    world = World([command("c0"), command("c1", "b")])
    run(world, [*once, ("tick", 3), ("store", 1), ("deliver", 0), ("work", 6), ("store", 0), ("deliver", 0)])
    run(world, [("work", 6)])
    assert not world.unacked and [r.command_id for r in world.log] == ["c0", "c1"]


def test_a_command_stored_but_left_marked_by_an_actuator_down_longer_than_the_memory_gets_no_second_result() -> None:
    """Found by the property below (the actuator stored the result, died before removing its marker, and the next
    one started more than ``keep_s + skew_s`` later): the marker's command is looked up in the log, not settled."""
    world = World([command("c0")])
    ops = [("decide", 42), *[("decide", 0)] * 15, ("fetch", 0), ("work", 27), ("tick", 3), ("restart", 0)]
    run(world, ops)
    world.drain()
    assert [r.command_id for r in world.log] == ["d1"]


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_no_vm_changes_more_often_than_its_rate_limit_allows(case: tuple[World, list[tuple[str, int]]]) -> None:
    """Within one actuator's life (its rate history is in memory): never more than max_changes per window."""
    world, ops = case
    world.ledger = Ledger(rules(max_changes=2, window_s=60.0))
    run(world, ops, restarts=False)
    for times in world.changes.values():
        for t in times:
            assert sum(1 for u in times if t <= u < t + 60.0) <= 2, times


@given(
    st.lists(
        st.tuples(st.sampled_from(["ha", "hb"]), st.integers(0, 9), st.booleans()),
        max_size=60,
    )
)
def test_terms_never_go_backwards_and_an_older_one_is_refused(seen: list[tuple[str, int, bool]]) -> None:
    ledger: Ledger[int] = Ledger(rules())
    highest: dict[str, int] = {}
    for i, (lease, term, from_bucket) in enumerate(seen):
        before = dict(ledger.terms)
        if from_bucket:
            ledger.learn_term(lease, term)
        else:
            refusal = ledger.admit(command(f"c{i}", decider=lease, term=term), 0.0)
            stale = term < highest.get(lease, 0)
            assert (refusal is not None and refusal.code is ErrorCode.STALE_TERM) == stale
        if from_bucket or term:
            highest[lease] = max(highest.get(lease, 0), term)
        for name, value in before.items():
            assert ledger.terms[name] >= value
        assert {k: v for k, v in ledger.terms.items() if v} == {k: v for k, v in highest.items() if v}


@given(st.lists(st.floats(0, 1000, allow_nan=False), max_size=40), st.integers(1, 5), st.floats(1, 120))
def test_the_rate_history_never_holds_more_than_the_limit_in_a_window(
    times: list[float], limit: int, window: float
) -> None:
    ledger: Ledger[int] = Ledger(rules(max_changes=limit, window_s=window))
    made: list[float] = []
    for now in sorted(times):
        decision = ledger.plan(command("c", target=3, seen=2), view(2), now).decision
        if isinstance(decision, Plan):
            ledger.changed("a", now)
            made.append(now)
        assert all(now - t < window for t in ledger.changes("a"))
    for t in made:
        assert sum(1 for u in made if t <= u < t + window) <= limit
