"""The actuator's command ledger (services/actuator/ledger.py), tested directly and with hypothesis.

The main property drives the ledger as the service does, through any interleaving of stored copies, deliveries
and redeliveries, worker steps (one hot-plug call at a time), failed calls, worker failures, actuator restarts, host
views read and taken late, capacity changes and the passing of time, against a model of the event log and the
host: once every copy is acknowledged, every command has exactly one result; and no grow is granted room that takes
the host's true commitment above its capacity, nor steps beyond its grant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from services.actuator.checks import Bounds, Plan, Refusal
from services.actuator.drivers.base import HostView, VmView
from services.actuator.ledger import (
    Delivery,
    Duplicate,
    Execute,
    Ledger,
    LedgerRules,
    Planned,
    Queued,
    Superseded,
    Turn,
)
from services.actuator.reservations import Grant
from shared.messages import ErrorCode, ScaleCommand, ScaleResult

VMS = ("a", "b")
CAPACITIES = (4, 5, 6, 7, 8, 10)


def rules(max_changes: int = 6, window_s: float = 60.0, bounds: dict[str, Bounds] | None = None) -> LedgerRules:
    per_vm = bounds or {}
    return LedgerRules(
        actuator="act",
        host="h",
        bounds=lambda vm: per_vm.get(vm, Bounds(1, 8)),
        max_changes=max_changes,
        rate_window_s=window_s,
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


def test_a_second_copy_is_held_while_the_first_is_under_way_and_acknowledged_with_it() -> None:
    ledger: Ledger[str] = Ledger(rules())
    first = command("c1")
    assert ledger.receive(first, "m1") == Queued(start_worker=True)
    assert ledger.receive(first, "m2") == Duplicate("it is answered or under way", held=True)
    turn = ledger.take("a", 0.0)
    assert turn == Turn(Delivery(first, "m1"), look_up_since=None)
    assert ledger.judge(first, 0.0) == Execute()
    ledger.stored(ledger.result(first, 1.0, 0.0, 2, 3, None))
    assert ledger.done(first) == ["m2"]
    assert ledger.receive(first, "m3") == Duplicate("it is answered or under way", held=False)
    assert ledger.take("a", 1.0) is None


def test_an_older_command_waiting_behind_a_newer_one_is_superseded() -> None:
    ledger: Ledger[str] = Ledger(rules())
    older, newer = command("c1"), command("c2", target=4)
    assert ledger.receive(older, "m1") == Queued(start_worker=True)
    assert ledger.receive(newer, "m2") == Queued(start_worker=False)
    turn = ledger.take("a", 5.0)
    assert turn is not None and turn.delivery.command == older
    judged = ledger.judge(older, 5.0)
    assert isinstance(judged, Superseded)
    assert judged.result.error_code is ErrorCode.SUPERSEDED and judged.result.retry_after == 0
    assert judged.result.command_id == "c1" and judged.result.time == 5.0
    ledger.done(older)
    turn = ledger.take("a", 5.0)
    assert turn is not None and ledger.judge(turn.delivery.command, 5.0) == Execute()


def test_a_command_older_than_the_memory_is_looked_up_in_the_log() -> None:
    ledger: Ledger[str] = Ledger(rules())
    old = command("c1", at=0.0)
    ledger.receive(old, "m")
    turn = ledger.take("a", 1000.0)
    assert turn is not None and turn.look_up_since == -60.0
    assert ledger.judge(old, 1000.0, in_log=True) == Duplicate("the event log has its result")
    fresh = command("c2", at=990.0)
    ledger.done(old)
    ledger.receive(fresh, "m2")
    turn = ledger.take("a", 1000.0)
    assert turn is not None and turn.look_up_since is None


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
    assert isinstance(restarted.receive(edge, "copy"), Duplicate)


def test_a_failed_worker_forgets_its_commands_so_their_redeliveries_are_new() -> None:
    ledger: Ledger[str] = Ledger(rules())
    first, second = command("c1"), command("c2")
    ledger.receive(first, "m1")
    ledger.receive(second, "m2")
    ledger.receive(first, "m1 again")
    turn = ledger.take("a", 0.0)
    assert turn is not None
    ledger.abandon("a", turn.delivery.command)
    assert ledger.receive(first, "m1 later") == Queued(start_worker=True)
    assert ledger.receive(second, "m2 later") == Queued(start_worker=False)


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
    done = ledger.settled(command("c1", target=4), before=2, now_vcpus=4, now=9.0, duration_s=0.5)
    assert done.ok and (done.vcpus_before, done.vcpus_after) == (2, 4)
    part = ledger.settled(command("c2", target=4), before=2, now_vcpus=3, now=9.0, duration_s=0.5)
    assert not part.ok and part.error_code is ErrorCode.UNKNOWN and "2 -> 3 vCPUs of the 4" in (part.error or "")


# -- properties -------------------------------------------------------------------------------------------------


@dataclass
class Worker:
    phase: str = "idle"  # idle -> taken -> [look ->] step... -> store -> finish -> idle
    turn: Turn[int] | None = None
    result: ScaleResult | None = None
    # an admitted command under way: its plan, the count it started from, its start, and the room it got
    plan: Plan | None = None
    before: int = 0
    started: float = 0.0
    sizes: tuple[int, int] | None = None
    grant: Grant | None = None
    ticket: int = 0  # a grow's host view: asked for with this ticket, answered with this snapshot
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
        received = self.ledger.receive(self.unacked[seq], seq)
        if isinstance(received, Duplicate):
            if not received.held:
                self.ack(seq)
        elif received.start_worker:
            self.workers[self.unacked[seq].vm] = Worker()

    def ack(self, seq: int) -> None:
        self.unacked.pop(seq, None)

    def advance(self, i: int) -> None:
        if not self.workers:
            return
        vm = sorted(self.workers)[i % len(self.workers)]
        worker = self.workers[vm]
        if worker.phase == "idle":
            worker.turn = self.ledger.take(vm, self.now)
            if worker.turn is None:
                del self.workers[vm]
            else:
                worker.phase = "taken"
        elif worker.phase == "taken":
            assert worker.turn is not None
            cmd = worker.turn.delivery.command
            in_log = worker.turn.look_up_since is not None and any(r.command_id == cmd.id for r in self.log)
            judged = self.ledger.judge(cmd, self.now, in_log)
            if isinstance(judged, Duplicate):
                worker.phase = "finish"
            elif isinstance(judged, Superseded):
                worker.result, worker.phase = judged.result, "store"
            else:
                self.begin(worker, cmd)
        elif worker.phase == "look":
            if i % 3 == 0:  # the driver answers slowly: other workers may grow and end meanwhile
                self.look(worker)
        elif worker.phase == "step":
            self.step(worker)
        elif worker.phase == "store":
            assert worker.result is not None and worker.turn is not None
            self.log.append(worker.result)
            if self.ledger.stored(worker.result):
                del self.markers[vm]
            worker.phase = "finish"
        else:
            assert worker.turn is not None
            for seq in (worker.turn.delivery.handle, *self.ledger.done(worker.turn.delivery.command)):
                self.ack(seq)
            self.workers[vm] = Worker()

    # -- one command carried out, as Actuator.execute does it ------------------------------------------------------

    def begin(self, worker: Worker, cmd: ScaleCommand) -> None:
        failure = self.ledger.admit(cmd, self.now)
        worker.before, worker.started = self.vcpus[cmd.vm], self.now
        if failure is None:
            planned = self.ledger.plan(cmd, view(worker.before, cmd.vm), self.now)
            worker.sizes = planned.sizes
            if isinstance(planned.decision, Refusal):
                failure = planned.decision
            else:
                worker.plan = planned.decision
                if worker.plan.direction > 0 and worker.plan.steps:
                    # the host view is asked for now and answered later: as stale as a view can be
                    worker.ticket, worker.snapshot, worker.phase = self.ledger.host.ticket(), self.snapshot(), "look"
                else:
                    self.start_steps(worker, cmd)
                return
        self.finish(worker, cmd, failure)

    def look(self, worker: Worker) -> None:
        assert worker.turn is not None and worker.plan is not None
        cmd = worker.turn.delivery.command
        view_ = HostView(cpus=self.capacity, vms=worker.snapshot)
        self.ledger.host.observe(view_, self.capacity, worker.ticket)
        worker.plan, worker.grant = self.ledger.room(cmd, worker.plan, worker.before)
        assert worker.grant is not None
        if worker.grant.steps:
            self.granted += 1
            # the host as it truly is, with the room every grow under way holds (this one's too)
            stepping = [w for w in self.workers.values() if w.phase == "step" or w is worker]
            held = {w.turn.delivery.command.vm: w.grant.size for w in stepping if w.grant and w.turn}
            true = {vm: max(n, held.get(vm, 0)) for vm, n in self.snapshot().items()}
            assert sum(true.values()) <= self.capacity, (true, self.capacity, worker.grant)
        if worker.grant.size < worker.grant.asked:
            self.refused += 1
        self.start_steps(worker, cmd)

    def start_steps(self, worker: Worker, cmd: ScaleCommand) -> None:
        assert worker.plan is not None
        if not worker.plan.steps:
            self.finish(worker, cmd, worker.grant.refusal() if worker.grant else None)
            return
        self.markers[cmd.vm] = (cmd, worker.before)
        self.ledger.begun(cmd)
        worker.phase = "step"

    def step(self, worker: Worker) -> None:
        assert worker.turn is not None and worker.plan is not None
        cmd = worker.turn.delivery.command
        self.vcpus[cmd.vm] += worker.plan.direction
        if worker.grant is not None:
            assert self.vcpus[cmd.vm] <= worker.grant.size, "a step beyond the room granted"
        if self.vcpus[cmd.vm] == worker.before + worker.plan.direction * worker.plan.steps:
            self.ledger.changed(cmd.vm, worker.started)
            self.changes.setdefault(cmd.vm, []).append(worker.started)
            self.finish(worker, cmd, worker.grant.refusal() if worker.grant else None)

    def step_fails(self, i: int) -> None:
        """A hot-plug call fails (timeout, not verified); an odd ``i``: it moved the VM all the same."""
        stepping = [vm for vm in sorted(self.workers) if self.workers[vm].phase == "step"]
        if not stepping:
            return
        worker = self.workers[stepping[i % len(stepping)]]
        assert worker.turn is not None and worker.plan is not None
        cmd = worker.turn.delivery.command
        if i % 2:
            self.vcpus[cmd.vm] += worker.plan.direction
        self.finish(worker, cmd, Refusal(ErrorCode.TIMEOUT, "the hypervisor did not answer"), sure=False)

    def finish(self, worker: Worker, cmd: ScaleCommand, failure: Refusal | None, sure: bool = True) -> None:
        after = self.vcpus[cmd.vm]
        if worker.grant is not None or after != worker.before:
            self.ledger.ended(cmd.vm, after if sure else None)
        worker.result = self.ledger.result(
            cmd, self.now, 0.0, worker.before, after, failure, worker.sizes, worker.grant
        )
        worker.phase = "store"

    # -- the host's side ------------------------------------------------------------------------------------------

    def look_for_metrics(self) -> None:
        self.views.append((self.ledger.host.ticket(), self.snapshot()))

    def see(self, i: int) -> None:
        """A view of the metrics refresh is answered (in any order), on the capacity in force now."""
        if self.views:
            ticket, seen = self.views.pop(i % len(self.views))
            self.ledger.host.observe(HostView(cpus=self.capacity, vms=seen), self.capacity, ticket)

    def fail(self, i: int) -> None:
        """A worker's I/O fails (the log, the bus): it forgets its commands, unacknowledged; a grow's room is
        released unsure of the count, as the service's ``finally`` does."""
        if not self.workers:
            return
        vm = sorted(self.workers)[i % len(self.workers)]
        worker = self.workers.pop(vm)
        if worker.phase == "step":
            self.ledger.ended(vm, None)
        self.ledger.abandon(vm, worker.turn.delivery.command if worker.turn else None)

    def restart(self) -> None:
        self.ledger = Ledger(rules())
        self.workers.clear()
        self.views.clear()
        since = self.ledger.recall_since(self.now)
        self.ledger.recall(r for r in self.log if r.time >= since)
        for vm, (cmd, before) in list(self.markers.items()):
            if cmd.id not in self.ledger.answered:
                result = self.ledger.settled(cmd, before, self.vcpus[vm], self.now, 0.0)
                self.log.append(result)
                self.ledger.stored(result)
            del self.markers[vm]
        self.changes.clear()

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
        elif op == "work":  # one worker's whole turn, or more
            for _ in range(1 + arg % 8):
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
            assert result.vcpus_before <= result.vcpus_after < result.target_vcpus, result


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
    run(world, [("advance", 0), ("advance", 0), ("advance", 1), ("advance", 1)])  # both asked for a host view
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
