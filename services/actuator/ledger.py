"""The actuator's command ledger: the rules that give every command exactly one result. Pure: no I/O, no asyncio;
times are arguments and the shell (service.py) carries out what the ledger decides.

A command's life, as the shell drives it:

1. ``receive``: a delivery from the command consumer is a ``Duplicate`` (its id is answered, queued or under way:
   no result) or ``Queued`` behind the VM's earlier commands (the first starts the VM's worker). A copy of an
   answered command is acknowledged at once; a copy of one queued or under way is held, and acknowledged with the
   original once that is answered: should the original's worker fail first, the copy is redelivered.
2. ``take``: the VM's worker takes its next command, one at a time, in order; ``None`` ends the worker. A
   command too old for the memory of answered ids comes with the time from which to look it up in the event log.
3. ``judge``: found in the log, a ``Duplicate``; a newer command for the VM waiting behind it, ``Superseded``
   (its result says so); otherwise ``Execute``.
4. ``admit`` (a VM an operator paused is refused here) then ``plan`` (with the rate limit) decide what to ask the
   driver; ``room`` cuts a grow to what fits on the host (reservations.py: the shell first hands ``host`` a fresh
   view of it), ``changed`` records a resize and ``ended`` releases the VM's reservation with its count.
5. ``result`` describes what happened (and advises when to ask again); ``stored`` remembers it as answered;
   ``done`` releases the delivery, which the shell then acknowledges with the copies held. ``abandon`` forgets a
   failed worker's commands, unacknowledged with their copies, so that their redeliveries count as new.

After a restart, ``recall`` refills the memory from the results in the event log, and ``settled`` gives the result
of a command a dead actuator left in progress (progress.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.actuator.answered import AnsweredCommands
from services.actuator.checks import Bounds, Plan, Refusal, admit, allowed, not_paused, plan, rate_limited
from services.actuator.drivers.base import VmView
from services.actuator.reservations import Grant, Reservations
from services.actuator.retry import Backoff, retry_after
from shared.messages import ErrorCode, PauseEvent, ScaleCommand, ScaleResult, short_text

# How long an answered command's id is kept in memory. A command stamped earlier than this (less a margin for
# clock skew between decider and actuator) is looked up in the event log instead.
ANSWERED_KEEP_S = 600.0
CLOCK_SKEW_MARGIN_S = 60.0

H = TypeVar("H")  # the shell's handle of one delivery (a NATS message): carried along, never looked into


@dataclass(frozen=True)
class LedgerRules:
    """What the ledger enforces, whatever a decider says."""

    actuator: str  # the name results carry
    host: str
    # Per VM: the sizes the actuator allows (the hypervisor's own come with each view).
    bounds: Callable[[str], Bounds]
    # At most this many resizes of one VM per window (clock seconds).
    max_changes: int = 6
    rate_window_s: float = 60.0
    keep_s: float = ANSWERED_KEEP_S
    skew_s: float = CLOCK_SKEW_MARGIN_S


@dataclass(frozen=True)
class Delivery(Generic[H]):
    command: ScaleCommand
    handle: H


@dataclass(frozen=True)
class Duplicate:
    """Answered already, or under way: no action and no second result. ``held``: the copy of a command under way,
    acknowledged with it (``done``); otherwise acknowledge it now."""

    why: str
    held: bool = False


@dataclass(frozen=True)
class Queued:
    """Waiting its turn; ``start_worker``: the VM has no worker yet, the shell starts one."""

    start_worker: bool


@dataclass(frozen=True)
class Turn(Generic[H]):
    delivery: Delivery[H]
    # Clock time from which the event log must be searched for its result first (None: the memory knows).
    look_up_since: float | None


@dataclass(frozen=True)
class Superseded:
    result: ScaleResult


@dataclass(frozen=True)
class Execute:
    pass


@dataclass(frozen=True)
class Planned:
    """What to do with a VM for an admitted command: the steps, or why not; and the sizes the VM may take."""

    decision: Plan | Refusal
    sizes: tuple[int, int]


class Ledger(Generic[H]):
    def __init__(self, rules: LedgerRules) -> None:
        self.rules = rules
        self.answered = AnsweredCommands(rules.keep_s)
        self._pending: set[str] = set()  # queued or being executed: a second copy is a duplicate
        self._copies: dict[str, list[H]] = {}  # per pending command: the copies held until it is answered
        self._queues: dict[str, deque[Delivery[H]]] = {}
        self._working: set[str] = set()  # VMs with a worker
        self._marked: set[str] = set()  # commands with a progress marker, to remove once their result is stored
        self._changes: dict[str, list[float]] = {}  # per VM: times of the recent resizes
        # Per VM: failures in a row that call for a back-off (guest-refused, timeouts...), until a change succeeds.
        self.backoff = Backoff()
        # The highest leadership term seen per decider: commands from an older term are refused.
        self.terms: dict[str, int] = {}
        # The host's commitments, from the driver's host views: grows are granted only what fits its capacity.
        self.host = Reservations(rules.host)

    # -- intake ---------------------------------------------------------------------------------------------------

    def receive(self, command: ScaleCommand, handle: H) -> Duplicate | Queued:
        if command.id in self.answered:
            return Duplicate("it is answered or under way")
        if command.id in self._pending:
            # Acknowledged only once the original is answered: acknowledging a redelivered copy acknowledges the
            # original, whose result would be lost if its worker then failed.
            self._copies.setdefault(command.id, []).append(handle)
            return Duplicate("it is answered or under way", held=True)
        self._pending.add(command.id)
        self._queues.setdefault(command.vm, deque()).append(Delivery(command, handle))
        start = command.vm not in self._working
        self._working.add(command.vm)
        return Queued(start_worker=start)

    def take(self, vm: str, now: float) -> Turn[H] | None:
        """The VM's next command, or None: the worker ends (a later command starts another)."""
        queue = self._queues.get(vm)
        if not queue:
            self._queues.pop(vm, None)
            self._working.discard(vm)
            return None
        delivery = queue.popleft()
        return Turn(delivery, self.look_up_since(delivery.command, now))

    def look_up_since(self, command: ScaleCommand, now: float) -> float | None:
        """Whether a command is too old for the memory of answered ids: then the clock time from which to search
        the event log for its result."""
        if command.time >= now - self.rules.keep_s + self.rules.skew_s:
            return None  # were it answered, the memory would know
        return command.time - self.rules.skew_s

    def judge(self, command: ScaleCommand, now: float, in_log: bool = False) -> Duplicate | Superseded | Execute:
        """What to do with the command just taken; ``in_log``: the event log holds its result."""
        if in_log:
            return Duplicate("the event log has its result")
        if self._queues.get(command.vm):
            # a newer order for this VM is waiting: this one ends without acting, and says why
            refusal = Refusal(ErrorCode.SUPERSEDED, "a newer command for this VM arrived before it could run")
            return Superseded(self.refuse(command, refusal, now))
        return Execute()

    def done(self, command: ScaleCommand) -> list[H]:
        """The command's turn is over (answered, or a duplicate): the shell acknowledges its delivery and the
        copies returned."""
        self._pending.discard(command.id)
        return self._copies.pop(command.id, [])

    def abandon(self, vm: str, command: ScaleCommand | None) -> None:
        """A worker failed: forget its command and those queued behind it, unacknowledged, so that their
        redeliveries are taken as new, not as duplicates."""
        if command is not None:
            self._pending.discard(command.id)
            self._copies.pop(command.id, None)
        for delivery in self._queues.pop(vm, deque()):
            self._pending.discard(delivery.command.id)
            self._copies.pop(delivery.command.id, None)
        self._working.discard(vm)

    # -- checks ---------------------------------------------------------------------------------------------------

    def admit(
        self, command: ScaleCommand, now: float, pause: PauseEvent | None = None, wall: float | None = None
    ) -> Refusal | None:
        """The checks before the hypervisor is asked anything; an admitted command raises its decider's term.
        ``pause``: the VM's pause as the shell knows it, judged at wall time ``wall`` (pauses are an operator's,
        in wall-clock time; by default ``now``); the refusal's ``retry_at`` is on the shared clock, as all are."""
        refusal = admit(command, self.rules.host, now, self.terms.get(command.decider, 0))
        if refusal is None:
            wall = now if wall is None else wall
            refusal = not_paused(pause, wall)
            if refusal is not None and refusal.retry_at is not None:
                refusal = refusal._replace(retry_at=now + (refusal.retry_at - wall))
        if refusal is None and command.term:
            self.learn_term(command.decider, command.term)
        return refusal

    def learn_term(self, lease: str, term: int) -> None:
        """A lease's term seen (in a command, or in the lease bucket): terms never go backwards."""
        self.terms[lease] = max(term, self.terms.get(lease, 0))

    def plan(self, command: ScaleCommand, view: VmView, now: float) -> Planned:
        """The steps to take from the VM's current view: within bounds, on the view the decider saw, and within
        the VM's rate limit when anything is to change."""
        bounds = self.rules.bounds(command.vm)
        decided = plan(command, view, bounds)
        if isinstance(decided, Plan) and decided.steps:
            limited = rate_limited(
                self._changes.get(command.vm, []), now, self.rules.max_changes, self.rules.rate_window_s
            )
            if limited is not None:
                decided = limited
        return Planned(decided, allowed(view, bounds))

    def room(self, command: ScaleCommand, decided: Plan, before: int) -> tuple[Plan, Grant | None]:
        """A grow cut to the whole vCPUs that fit on the host, with the grant to report (reserved until ``ended``);
        anything else, or any command while the host is unknown (no view: a driver that reports none), as it is."""
        if decided.direction <= 0 or not decided.steps or not self.host.known:
            return decided, None
        grant = self.host.grant(command.vm, before, before + decided.steps)
        return Plan(decided.direction, grant.steps), grant

    def ended(self, vm: str, after: int | None) -> None:
        """A command that resized ``vm`` or was granted room ended with ``after`` vCPUs (None: unsure, a step failed
        part-way): its reservation is released."""
        self.host.release(vm, after)

    def begun(self, command: ScaleCommand) -> None:
        """A progress marker was written for the command: it is removed once the result is stored."""
        self._marked.add(command.id)

    def changed(self, vm: str, now: float) -> None:
        """A resize of ``vm`` was carried out at ``now``: it counts against the VM's rate limit."""
        window = self.rules.rate_window_s
        history = self._changes.setdefault(vm, [])
        history[:] = [t for t in history if now - t < window] + [now]

    def changes(self, vm: str) -> list[float]:
        return list(self._changes.get(vm, []))

    # -- results --------------------------------------------------------------------------------------------------

    def refuse(self, command: ScaleCommand, refusal: Refusal, now: float) -> ScaleResult:
        """The result of a command that never reached the hypervisor."""
        return ScaleResult(
            command_id=command.id,
            time=now,
            host=command.host,
            vm=command.vm,
            ok=False,
            vcpus_before=None,
            vcpus_after=None,
            target_vcpus=command.target_vcpus,
            duration_s=0.0,
            actuator=self.rules.actuator,
            error_code=refusal.code,
            error=short_text(refusal.message),
            sample_time=command.sample_time,
            retry_after=self._retry_after(command.vm, refusal, now),
            rate_limit_changes=self.rules.max_changes,
            rate_limit_window_s=self.rules.rate_window_s,
        )

    def result(
        self,
        command: ScaleCommand,
        now: float,
        duration_s: float,
        before: int | None,
        after: int | None,
        failure: Refusal | None,
        sizes: tuple[int, int] | None = None,
        grant: Grant | None = None,
    ) -> ScaleResult:
        """The result of a command as carried out: what really happened, and when to ask again after a failure.
        A grow judged against the host (``grant``) states the host's capacity and what was committed then."""
        if (failure is None or failure.code is ErrorCode.HOST_FULL) and before != after:
            self.backoff.succeeded(command.vm)  # the VM took a change (a partial grant too): its back-off starts over
        return ScaleResult(
            command_id=command.id,
            time=now,
            host=command.host,
            vm=command.vm,
            ok=failure is None,
            vcpus_before=before,
            vcpus_after=after,
            target_vcpus=command.target_vcpus,
            duration_s=duration_s,
            actuator=self.rules.actuator,
            error_code=failure.code if failure else None,
            error=short_text(failure.message) if failure else None,
            sample_time=command.sample_time,
            allowed_min_vcpus=sizes[0] if sizes else None,
            allowed_max_vcpus=sizes[1] if sizes else None,
            retry_after=self._retry_after(command.vm, failure, now) if failure else None,
            rate_limit_changes=self.rules.max_changes,
            rate_limit_window_s=self.rules.rate_window_s,
            host_capacity_vcpus=grant.capacity if grant else None,
            host_committed_vcpus=grant.committed if grant else None,
        )

    def _retry_after(self, vm: str, failure: Refusal, now: float) -> float:
        return retry_after(failure.code, vm, now=now, backoff=self.backoff, retry_at=failure.retry_at)

    def stored(self, result: ScaleResult) -> bool:
        """A result is in the event log: from now on a copy of its command is a duplicate. Whether the command's
        progress marker is to be removed."""
        self.answered.add(result.command_id, result.time)
        marked = result.command_id in self._marked
        self._marked.discard(result.command_id)
        return marked

    # -- restart --------------------------------------------------------------------------------------------------

    def recall(self, results: Iterable[ScaleResult]) -> None:
        """Results read back from the event log at startup, before any command is taken."""
        for result in results:
            self.answered.add(result.command_id, result.time)

    def recall_since(self, now: float) -> float:
        """The clock time from which to read back results at startup."""
        return now - self.rules.keep_s - self.rules.skew_s

    def settled(self, command: ScaleCommand, before: int, now_vcpus: int, now: float, duration_s: float) -> ScaleResult:
        """The result of a command a dead actuator left in progress (and not answered), as things are now."""
        failure = (
            None
            if now_vcpus == command.target_vcpus
            else Refusal(
                ErrorCode.UNKNOWN,
                f"interrupted by an actuator restart: {before} -> {now_vcpus} vCPUs of the "
                f"{command.target_vcpus} asked",
            )
        )
        return self.result(command, now, duration_s, before, now_vcpus, failure)
