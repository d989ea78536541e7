"""The actuator's command ledger: the rules that give every command exactly one result, and their order. Pure: no
I/O, no asyncio; times are arguments. As in neon's autoscaler agent (``pkg/agent/core/state.go``), the ledger only
says what to do next and the shell (service.py) does it: ARCHITECTURE.md, beside this file, tells the whole story.

* Intake: ``receive`` says what to do with each delivery from the command consumer (``Intake``): ``Terminate``
  one that is no command; ``Ignore`` a copy of a command answered, queued or under way (no result: a copy of an
  answered command is acknowledged at once; a copy of one queued or under way is held, and acknowledged with the
  original once that is answered: should the original's worker fail first, the copy is redelivered);
  ``StartWorker`` for the VM of a command first in its queue, or ``Wait`` behind its earlier commands.
* A VM's worker asks ``next_action(vm, now)`` and carries the action out (``Action``: look a result up in the event
  log, read the pause, read the VM, read the host, mark progress, execute the hot-plug steps, read the count again,
  store the result, remove the marker, acknowledge, or ``Done``), then hands its ``Outcome`` to ``outcome``. The
  VM's commands are taken one at a time, in order: a command too old for the memory of answered ids is looked up in
  the log first (found: a duplicate); one with a newer command for the VM behind it is ``superseded``; the rest are
  admitted (``admit``: a VM an operator paused is refused here), planned (``plan``, with the rate limit), cut to
  what fits on the host (``room``, reservations.py), carried out and answered (``result``: the one place a result is
  built). ``abandon`` forgets a failed worker's commands, unacknowledged with their copies, so that their
  redeliveries count as new.

Start-up comes first, in the same way: ``start_action(now)`` says what the actuator does before it takes any
command (``StartAction``: open its stores, ``recall`` the memory from the results in the event log, settle each
command a dead actuator left in progress (``settled``, progress.py) or remove its marker if it is answered (in the
memory, or, older, in the log), know the pauses in force), and ``started`` takes each outcome, until ``TakeCommands``.

Resources: a VM's commands wait in one lane per resource (``lane``): a memory order neither supersedes nor waits
for a vCPU order of the same VM, and each lane has its own rate limit and back-off. A memory command goes the same
way as a vCPU one, with its own checks (memory_checks.py): read the VM's memory (``MemoryRead``), plan, mark,
``Execute`` its ``MemoryPlan`` (one request, then the size read until it gets there), answer in bytes. A memory
grow is cut to what fits under the host's memory capacity as a vCPU grow is under its vCPU capacity (``room``: one
``Reservations`` per resource), when the driver reports the host's memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import msgspec

from services.actuator.answered import AnsweredCommands
from services.actuator.checks import Bounds, Plan, Refusal, admit, allowed, not_paused, plan, rate_limited
from services.actuator.drivers.base import MemoryView, VmView
from services.actuator.memory_checks import MemoryPlan, allowed_memory, plan_memory
from services.actuator.reservations import Grant, Reservations
from services.actuator.retry import Backoff, retry_after
from shared.config.schema import ActuatorSettings
from shared.messages import ErrorCode, PauseEvent, Resource, ScaleCommand, ScaleResult, short_text
from shared.units import MAX_MEMORY_BYTES

# How long an answered command's id is kept in memory. A command stamped earlier than this (less a margin for
# clock skew between decider and actuator) is looked up in the event log instead.
ANSWERED_KEEP_S = 600.0
CLOCK_SKEW_MARGIN_S = 60.0

# The rate limit's defaults are the actuator's settings' (its flags and [actuator] keys), declared once there.
_SETTINGS = ActuatorSettings()

_ANSWERED = "it is answered or under way"  # why a copy is ignored

H = TypeVar("H")  # the shell's handle of one delivery (a NATS message): carried along, never looked into

# Appended to a VM's name for its memory lane: a control character, which no VM name holds (shared.messages.VmName).
MEMORY_LANE = "\x1fmemory"


def lane(command: ScaleCommand) -> str:
    """The queue ``command`` waits in, one per VM and resource: a VM's vCPU lane is its name (as before memory was
    decided), its memory lane the name and ``MEMORY_LANE``."""
    return command.vm if command.resource is Resource.VCPU else command.vm + MEMORY_LANE


def lane_label(lane: str) -> str:
    """A lane as people read it: ``vm-01``, ``vm-01 (memory)``."""
    return lane.replace(MEMORY_LANE, " (memory)")


@dataclass(frozen=True)
class LedgerRules:
    """What the ledger enforces, whatever a decider says."""

    actuator: str  # the name results carry
    host: str
    # Per VM: the sizes the actuator allows (the hypervisor's own come with each view).
    bounds: Callable[[str], Bounds]
    # At most this many resizes of one VM per window (clock seconds).
    max_changes: int = _SETTINGS.max_changes
    rate_window_s: float = _SETTINGS.rate_window
    keep_s: float = ANSWERED_KEEP_S
    skew_s: float = CLOCK_SKEW_MARGIN_S
    # Whether the driver reports host views: without, grows are not held to the host's capacity (none is read).
    host_views: bool = True


@dataclass(frozen=True)
class Delivery(Generic[H]):
    command: ScaleCommand
    handle: H


# -- what the intake is told to do with a delivery (``receive``) ----------------------------------------------------


@dataclass(frozen=True)
class Terminate(Generic[H]):
    """A delivery that is no command (the inbox refused it, and counted why): terminate it, never to be
    redelivered, and give it no result."""

    handle: H


@dataclass(frozen=True)
class Ignore(Generic[H]):
    """A copy of a command answered or under way: no action and no second result. Count and log it as a duplicate
    (``why``) and acknowledge ``handles`` now; none: the copy of a command under way is held, and acknowledged with
    the original (``Acknowledge``)."""

    command: ScaleCommand
    why: str
    handles: tuple[H, ...] = ()


@dataclass(frozen=True)
class StartWorker:
    """The command is the first of its lane's queue (its VM's, for its resource: ``lane``): start the lane's worker
    (it asks ``next_action``)."""

    vm: str  # the lane


@dataclass(frozen=True)
class Wait:
    """Queued behind the VM's earlier commands: the VM's worker takes it in turn; nothing to do now."""


Intake = Terminate[H] | Ignore[H] | StartWorker | Wait


@dataclass(frozen=True)
class Planned:
    """What to do with a VM for an admitted command: the steps, or why not; and the sizes the VM may take."""

    decision: Plan | MemoryPlan | Refusal
    sizes: tuple[int, int]


# -- what a VM's worker is told to do next (``next_action``) ----------------------------------------------------------


@dataclass(frozen=True)
class LookUp:
    """Search the event log from clock time ``since`` for a result of ``command`` (too old for the memory of
    answered ids). Outcome: ``Found``."""

    command: ScaleCommand
    since: float


@dataclass(frozen=True)
class ReadPause:
    """Read the VM's pause as the shell knows it (an operator's, in wall-clock time). Outcome: ``PauseRead``."""

    command: ScaleCommand


@dataclass(frozen=True)
class ReadVm:
    """Read the VM's view from the driver (of its memory, for a memory command). Outcome: ``VmRead`` (``MemoryRead``),
    or ``Failed``."""

    command: ScaleCommand


@dataclass(frozen=True)
class ReadHost:
    """Read the driver's host view afresh and hand it to ``Ledger.host`` (with a ticket), before a grow is granted
    room. Outcome: ``HostRead``, or ``Failed``."""

    command: ScaleCommand


@dataclass(frozen=True)
class Mark:
    """Write the command's progress marker (progress.py): a dead actuator's successor settles it. Outcome:
    ``Marked``."""

    command: ScaleCommand
    before: int


@dataclass(frozen=True)
class Execute(Generic[H]):
    """Take the hot-plug steps of ``plan`` from ``before`` vCPUs (a ``MemoryPlan``: ask for its target and read the
    size until it is there), keeping ``handle``'s delivery alive meanwhile; ``grant``: the host room the grow holds,
    if judged. Outcome: ``Executed``, or ``Failed``."""

    command: ScaleCommand
    plan: Plan | MemoryPlan
    before: int
    grant: Grant | None
    handle: H


@dataclass(frozen=True)
class Reread:
    """A driver call failed, or a check refused: read the VM's count again, to report what really is. Outcome:
    ``Recounted``."""

    command: ScaleCommand


@dataclass(frozen=True)
class Store:
    """Store ``result`` in the event log. Outcome: ``Stored`` (the same result)."""

    result: ScaleResult


@dataclass(frozen=True)
class Unmark:
    """Remove the command's progress marker: its result is stored. Outcome: ``Unmarked``."""

    command: ScaleCommand


@dataclass(frozen=True)
class Acknowledge(Generic[H]):
    """Acknowledge these deliveries (the command's, and the copies held with it); ``duplicate``: the command was not
    carried out, and why (to count and log). Outcome: ``Acknowledged`` (the same handles)."""

    command: ScaleCommand
    handles: tuple[H, ...]
    duplicate: str | None = None


@dataclass(frozen=True)
class Done:
    """The VM has no command left: its worker ends (a later command starts another)."""


Action = LookUp | ReadPause | ReadVm | ReadHost | Mark | Execute[H] | Reread | Store | Unmark | Acknowledge[H] | Done


# -- what the worker hands back (``outcome``) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    in_log: bool


@dataclass(frozen=True)
class PauseRead:
    """The VM's pause (None: none), judged at wall-clock time ``wall``."""

    pause: PauseEvent | None
    wall: float


@dataclass(frozen=True)
class VmRead:
    view: VmView


@dataclass(frozen=True)
class MemoryRead:
    view: MemoryView


@dataclass(frozen=True)
class HostRead:
    pass


@dataclass(frozen=True)
class Marked:
    pass


@dataclass(frozen=True)
class Executed:
    after: int


@dataclass(frozen=True)
class Failed:
    """The driver refused or failed (its error code and message)."""

    refusal: Refusal


@dataclass(frozen=True)
class Recounted:
    """The count (for memory: the size in bytes) read again (None: that read failed too)."""

    vcpus: int | None


@dataclass(frozen=True)
class Stored:
    result: ScaleResult


@dataclass(frozen=True)
class Unmarked:
    pass


@dataclass(frozen=True)
class Acknowledged(Generic[H]):
    handles: tuple[H, ...]


Outcome = (
    Found
    | PauseRead
    | VmRead
    | MemoryRead
    | HostRead
    | Marked
    | Executed
    | Failed
    | Recounted
    | Stored
    | Unmarked
    | Acknowledged[H]
)


# -- what the actuator does before it takes any command (``start_action``), and what that found (``started``) ------


@dataclass(frozen=True)
class Open:
    """Make sure the event log's streams and the progress markers' bucket exist. Outcome: ``Opened``."""


@dataclass(frozen=True)
class Recall:
    """Read back the results stored from clock time ``since`` on: the memory of answered ids. Outcome:
    ``Recalled``."""

    since: float


@dataclass(frozen=True)
class FindLeftOver:
    """Read the progress markers a dead actuator of this host left (progress.py). Outcome: ``LeftOver``."""


@dataclass(frozen=True)
class Settle:
    """A command a dead actuator left in progress, unanswered: read the VM until it reaches the target or stops
    moving (a step the dead actuator asked for may still land). Outcome: ``Settled``, or ``Failed`` (the marker
    stays, for the next start)."""

    command: ScaleCommand
    before: int


@dataclass(frozen=True)
class WatchPauses:
    """Start the pause bucket's watch, and wait until the pauses in force are known. Outcome: ``Watching``."""


@dataclass(frozen=True)
class TakeCommands:
    """Started: subscribe to the command consumer and take its deliveries (``receive``)."""


# ``LookUp``, ``Store`` and ``Unmark`` are a worker's actions, and serve a left-over command the same way.
StartAction = Open | Recall | FindLeftOver | LookUp | Settle | Store | Unmark | WatchPauses | TakeCommands


@dataclass(frozen=True)
class Opened:
    pass


@dataclass(frozen=True)
class Recalled:
    results: tuple[ScaleResult, ...]


@dataclass(frozen=True)
class LeftOver:
    """The markers found: each command with its VM's count before its first step."""

    markers: tuple[tuple[ScaleCommand, int], ...]


@dataclass(frozen=True)
class Settled:
    """The VM's count (for memory: its size in bytes) once it settled; ``step``: how near the target counts as there
    (the hypervisor's memory step; 1 for vCPUs)."""

    vcpus: int
    step: int = 1


@dataclass(frozen=True)
class Watching:
    pass


StartOutcome = Opened | Recalled | LeftOver | Found | Settled | Failed | Stored | Unmarked | Watching

StartPhase = Literal["open", "recall", "find", "settle", "store", "unmark", "started"]


@dataclass
class StartUp:
    """How far the start-up has got: its ``phase`` names the next action."""

    phase: StartPhase = "open"
    markers: deque[tuple[ScaleCommand, int]] = field(default_factory=deque)  # the first is the one in turn
    since: float = 0.0  # monotonic time the marker in turn began to settle, for its result's duration
    in_log: bool | None = None  # the marker in turn's command, too old for the memory: found in the log (None: not
    # looked up)
    result: ScaleResult | None = None


# How far a command has got; each names the next action (``Ledger.next_action``).
Phase = Literal["new", "judge", "read", "host", "mark", "execute", "reread", "store", "unmark", "acknowledge"]


@dataclass
class Job:
    """How far the VM's command in turn (the head of its queue) has got: its ``phase`` names the next action."""

    phase: Phase = "new"
    duplicate: str | None = None  # found in the event log: acknowledged, not carried out
    now: float = 0.0  # clock time of its admission: its checks and its change count from then
    started: float = 0.0  # monotonic time of its admission, for its duration
    before: int | None = None
    after: int | None = None
    sizes: tuple[int, int] | None = None
    plan: Plan | MemoryPlan | None = None
    guest_used: int | None = None  # memory: what the guest used when the shrink was judged
    step: int = 1  # memory: the hypervisor's step, on which a grow cut short is cut
    target: int | None = None  # memory: the command's target on that step (what its result says it asked)
    grant: Grant | None = None
    failure: Refusal | None = None
    stepping: bool = False  # a hot-plug step is under way: should it fail, the VM's count is not sure
    released: bool = False  # its reservation (if any) is released
    result: ScaleResult | None = None
    acknowledged: bool = False  # its own delivery (copies held may follow)


class Ledger(Generic[H]):
    def __init__(self, rules: LedgerRules) -> None:
        self.rules = rules
        self.answered = AnsweredCommands(rules.keep_s)
        self._pending: set[str] = set()  # queued or being executed: a second copy is a duplicate
        self._copies: dict[str, list[H]] = {}  # per pending command: the copies held until it is answered
        self._queues: dict[str, deque[Delivery[H]]] = {}  # per VM: its command in turn first, then those waiting
        self._jobs: dict[str, Job] = {}  # per VM: how far its command in turn has got (none: not begun)
        self._working: set[str] = set()  # VMs with a worker
        self._marked: set[str] = set()  # commands with a progress marker, to remove once their result is stored
        self._changes: dict[str, list[float]] = {}  # per VM: times of the recent resizes
        # Per VM: failures in a row that call for a back-off (guest-refused, timeouts...), until a change succeeds.
        self.backoff = Backoff()
        # The highest leadership term seen per decider: commands from an older term are refused.
        self.terms: dict[str, int] = {}
        # The host's commitments, from the driver's host views: grows are granted only what fits its capacity, in
        # vCPUs and (where the driver reports the host's memory) in bytes.
        self.host = Reservations(rules.host)
        self.host_memory = Reservations(rules.host, Resource.MEMORY)
        self.start = StartUp()

    # -- intake ---------------------------------------------------------------------------------------------------

    def receive(self, command: ScaleCommand | None, handle: H) -> Intake[H]:
        """What to do with a delivery from the command consumer (``command``: as the inbox read it; None: it is no
        command), taken in the order the consumer gives them."""
        if command is None:
            return Terminate(handle)
        if command.id in self.answered:
            return Ignore(command, _ANSWERED, (handle,))
        if command.id in self._pending:
            # Acknowledged only once the original is answered: acknowledging a redelivered copy acknowledges the
            # original, whose result would be lost if its worker then failed.
            self._copies.setdefault(command.id, []).append(handle)
            return Ignore(command, _ANSWERED)
        self._pending.add(command.id)
        key = lane(command)
        self._queues.setdefault(key, deque()).append(Delivery(command, handle))
        if key in self._working:
            return Wait()
        self._working.add(key)
        return StartWorker(key)

    # -- the order: what a VM's worker does next, and what it found -------------------------------------------------

    def next_action(self, vm: str, now: float) -> Action[H]:
        """What ``vm``'s worker is to do next, at clock time ``now``. Pure: asking twice gives the same action; only
        ``outcome`` moves the command on."""
        queue = self._queues.get(vm)
        if not queue:
            return Done()
        delivery = queue[0]
        command = delivery.command
        job = self._jobs.get(vm) or Job()
        phase = job.phase
        if phase == "new":
            since = self.look_up_since(command, now)
            if since is not None:
                return LookUp(command, since)
            phase = "judge"
        if phase == "judge":
            if len(queue) > 1:
                # a newer order for this VM is waiting: this one ends without acting, and says why
                refusal = Refusal(ErrorCode.SUPERSEDED, "a newer command for this VM arrived before it could run")
                return Store(self.refuse(command, refusal, now))  # retried at once: no back-off counted, pure
            return ReadPause(command)
        if phase == "read":
            return ReadVm(command)
        if phase == "host":
            return ReadHost(command)
        if phase == "mark":
            assert job.before is not None
            return Mark(command, job.before)
        if phase == "execute":
            assert job.plan is not None
            assert job.before is not None
            return Execute(command, job.plan, job.before, job.grant, delivery.handle)
        if phase == "reread":
            return Reread(command)
        if phase == "store":
            assert job.result is not None
            return Store(job.result)
        if phase == "unmark":
            return Unmark(command)
        assert phase == "acknowledge", phase
        copies = tuple(self._copies.get(command.id, ()))
        if job.acknowledged:
            return Acknowledge(command, copies)
        return Acknowledge(command, (delivery.handle, *copies), job.duplicate)

    def outcome(self, vm: str, outcome: Outcome[H], now: float, mono: float) -> None:
        """What carrying out ``vm``'s last action found, at clock time ``now`` and monotonic time ``mono``."""
        queue = self._queues[vm]
        command = queue[0].command
        job = self._jobs.setdefault(vm, Job())
        if isinstance(outcome, Found):
            job.phase, job.duplicate = (
                ("acknowledge", "the event log has its result") if outcome.in_log else ("judge", None)
            )
        elif isinstance(outcome, PauseRead):
            job.now, job.started = now, mono
            job.failure = self.admit(command, now, outcome.pause, outcome.wall)
            if job.failure is None:
                job.phase = "read"
            else:
                self._finish(job, command, now, mono)
        elif isinstance(outcome, VmRead | MemoryRead):
            if isinstance(outcome, MemoryRead):
                job.before = job.after = outcome.view.size_bytes
                job.guest_used = outcome.view.guest_used_bytes
                job.step = max(1, outcome.view.step_bytes)
            else:
                job.before = job.after = outcome.view.online_vcpus
            planned = self.plan(command, outcome.view, job.now)
            job.sizes = planned.sizes
            if isinstance(planned.decision, Refusal):
                job.failure, job.phase = planned.decision, "reread"
            else:
                job.plan = planned.decision
                if isinstance(job.plan, MemoryPlan):
                    job.target = job.plan.target
                if _grows(job.plan) and self.rules.host_views and self._judged_on_host(job.plan):
                    job.phase = "host"  # judged on the host as it is now, not as it was
                else:
                    self._roomed(job, command, now, mono)
        elif isinstance(outcome, HostRead):
            self._roomed(job, command, now, mono)
        elif isinstance(outcome, Marked):
            self._marked.add(command.id)
            job.stepping, job.phase = True, "execute"
        elif isinstance(outcome, Executed):
            job.after, job.stepping = outcome.after, False
            self.changed(vm, job.now)
            self._stepped(job, command, now, mono)
        elif isinstance(outcome, Failed):
            job.failure = outcome.refusal
            if job.before is None:
                self._finish(job, command, now, mono)
            else:
                job.phase = "reread"
        elif isinstance(outcome, Recounted):
            if outcome.vcpus is not None:
                job.after = outcome.vcpus
            self._finish(job, command, now, mono)
        elif isinstance(outcome, Stored):
            job.result = outcome.result
            job.phase = "unmark" if self.stored(outcome.result) else "acknowledge"
        elif isinstance(outcome, Unmarked):
            job.phase = "acknowledge"
        else:
            self._acknowledged(vm, job, command, len(outcome.handles))

    def _judged_on_host(self, decided: Plan | MemoryPlan) -> bool:
        """Whether a grow reads the host first: a vCPU grow always; a memory grow unless the views taken so far say
        the driver reports no memory (then a failed host read must not fail a grow the host cannot judge). A driver
        that did report it and missed it in the last view (a VM's memory not read that time) is read again: the next
        view may have it."""
        return (
            not isinstance(decided, MemoryPlan)
            or not self.host.known
            or self.host_memory.known
            or self.host_memory.reported
        )

    def _roomed(self, job: Job, command: ScaleCommand, now: float, mono: float) -> None:
        """The plan cut to what fits on the host: steps to take, or nothing."""
        assert job.plan is not None
        assert job.before is not None
        job.plan, job.grant = self.room(command, job.plan, job.before, job.step)
        if _moves(job.plan):
            job.phase = "mark"
        else:
            self._stepped(job, command, now, mono)

    def _stepped(self, job: Job, command: ScaleCommand, now: float, mono: float) -> None:
        """The steps granted are taken (or none were): a grow cut short says so, with the count read again."""
        job.failure = job.grant.refusal() if job.grant is not None else None
        if job.failure is None:
            self._finish(job, command, now, mono)
        else:
            job.phase = "reread"

    def _finish(self, job: Job, command: ScaleCommand, now: float, mono: float) -> None:
        """The driver is done with the command: release its room, and describe what happened."""
        self._release(command, job)
        job.result = self.result(
            command,
            now,
            mono - job.started,
            job.before,
            job.after,
            job.failure,
            job.sizes,
            job.grant,
            aligned_target=job.target,
            guest_used=job.guest_used,
        )
        job.phase = "store"

    def _release(self, command: ScaleCommand, job: Job) -> None:
        # Until now the grant's room stayed reserved, whatever happened (a failure too), in the ledger of the
        # command's resource.
        if not job.released and (job.grant is not None or (job.before is not None and job.after != job.before)):
            self.ended(command.vm, None if job.stepping else job.after, command.resource)
        job.released = True

    def _acknowledged(self, vm: str, job: Job, command: ScaleCommand, count: int) -> None:
        copies = self._copies.get(command.id, [])
        if not job.acknowledged:
            job.acknowledged, count = True, count - 1
        del copies[:count]  # copies only join at the end: those acknowledged are the first
        if copies:
            return  # a copy came in meanwhile: acknowledged next
        self._pending.discard(command.id)
        self._copies.pop(command.id, None)
        del self._jobs[vm]
        queue = self._queues[vm]
        queue.popleft()
        if not queue:
            del self._queues[vm]
            self._working.discard(vm)

    def holding(self, vm: str) -> Grant | None:
        """The host room ``vm``'s command in turn was granted and still holds (None: none)."""
        job = self._jobs.get(vm)
        return job.grant if job is not None and not job.released else None

    def in_flight(self) -> int:
        """Commands admitted and not yet answered: those the driver is working on."""
        return sum(1 for job in self._jobs.values() if job.phase in ("read", "host", "mark", "execute", "reread"))

    def look_up_since(self, command: ScaleCommand, now: float) -> float | None:
        """Whether a command is too old for the memory of answered ids: then the clock time from which to search
        the event log for its result."""
        if command.time >= now - self.rules.keep_s + self.rules.skew_s:
            return None  # were it answered, the memory would know
        return command.time - self.rules.skew_s

    def abandon(self, vm: str) -> None:
        """A lane's worker failed: release the room its command held, forget it and those queued behind it,
        unacknowledged, so that their redeliveries are taken as new, not as duplicates."""
        job = self._jobs.pop(vm, None)
        queue = self._queues.pop(vm, deque())
        if job is not None and queue:
            self._release(queue[0].command, job)
        for delivery in queue:
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

    def plan(self, command: ScaleCommand, view: VmView | MemoryView, now: float) -> Planned:
        """The steps to take from the VM's current view (of its memory, for a memory command): within bounds, on the
        view the decider saw, and within the lane's rate limit when anything is to change."""
        bounds = self.rules.bounds(command.vm)
        decided: Plan | MemoryPlan | Refusal
        if isinstance(view, MemoryView):
            decided, sizes = plan_memory(command, view, bounds), allowed_memory(view, bounds)
        else:
            decided, sizes = plan(command, view, bounds), allowed(view, bounds)
        if not isinstance(decided, Refusal) and _moves(decided):
            limited = rate_limited(
                self._changes.get(lane(command), []), now, self.rules.max_changes, self.rules.rate_window_s
            )
            if limited is not None:
                decided = limited
        return Planned(decided, sizes)

    def room(
        self, command: ScaleCommand, decided: Plan | MemoryPlan, before: int, step: int = 1
    ) -> tuple[Plan | MemoryPlan, Grant | None]:
        """A grow cut to the whole vCPUs that fit on the host (for memory: the bytes, on the hypervisor's ``step``),
        with the grant to report (reserved until ``ended``); anything else, or any command while the host (its
        memory) is unknown (no view: a driver that reports none), as it is. A memory grow granted nothing is a plan
        that stays where it is."""
        if not _grows(decided):
            return decided, None
        if isinstance(decided, MemoryPlan):
            if not self.host_memory.known:
                return decided, None
            grant = self.host_memory.grant(command.vm, before, decided.target, step)
            return (MemoryPlan(grant.size, 1) if grant.steps > 0 else MemoryPlan(before, 0)), grant
        if not self.host.known:
            return decided, None
        grant = self.host.grant(command.vm, before, before + decided.steps)
        return Plan(decided.direction, grant.steps), grant

    def ended(self, vm: str, after: int | None, resource: Resource = Resource.VCPU) -> None:
        """A command that resized ``vm`` or was granted room ended with ``after`` vCPUs (bytes, for memory; None:
        unsure, a step failed part-way): its reservation is released."""
        (self.host if resource is Resource.VCPU else self.host_memory).release(vm, after)

    def changed(self, vm: str, now: float) -> None:
        """A resize in lane ``vm`` was carried out at ``now``: it counts against the lane's rate limit (one per VM
        and resource)."""
        window = self.rules.rate_window_s
        history = self._changes.setdefault(vm, [])
        history[:] = [t for t in history if now - t < window] + [now]

    def changes(self, vm: str) -> list[float]:
        return list(self._changes.get(vm, []))

    # -- results --------------------------------------------------------------------------------------------------

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
        *,
        aligned_target: int | None = None,
        guest_used: int | None = None,
    ) -> ScaleResult:
        """The one builder of a result: what really happened, and when to ask again after a failure. A grow judged
        against the host (``grant``) states the host's capacity and what was committed then. A memory command's
        sizes are bytes (``aligned_target``: its target on the hypervisor's step; ``guest_used``: what the guest
        used when a shrink was judged)."""
        key = lane(command)
        if (failure is None or failure.code in (ErrorCode.HOST_FULL, ErrorCode.PARTIAL)) and before != after:
            self.backoff.succeeded(key)  # the lane took a change (a partial one too): its back-off starts over
        result = ScaleResult(
            command_id=command.id,
            time=now,
            host=command.host,
            vm=command.vm,
            ok=failure is None,
            vcpus_before=None,
            vcpus_after=None,
            duration_s=duration_s,
            actuator=self.rules.actuator,
            error_code=failure.code if failure else None,
            error=short_text(failure.message) if failure else None,
            sample_time=command.sample_time,
            retry_after=self._retry_after(key, failure, now) if failure else None,
            rate_limit_changes=self.rules.max_changes,
            rate_limit_window_s=self.rules.rate_window_s,
        )
        low, high = sizes if sizes else (None, None)
        if command.resource is Resource.MEMORY:
            below_used = failure is not None and failure.code is ErrorCode.BELOW_USED
            return msgspec.structs.replace(
                result,
                resource=command.resource,
                target_memory_bytes=aligned_target if aligned_target is not None else command.target_memory_bytes,
                memory_before_bytes=before,
                memory_after_bytes=after,
                allowed_min_memory_bytes=low,
                allowed_max_memory_bytes=high,
                guest_used_bytes=guest_used if below_used else None,
                # within the message's bounds: an overcommitted host's figure may pass what one VM could hold
                host_capacity_memory_bytes=min(grant.capacity, MAX_MEMORY_BYTES) if grant else None,
                host_committed_memory_bytes=min(grant.committed, MAX_MEMORY_BYTES) if grant else None,
            )
        return msgspec.structs.replace(
            result,
            vcpus_before=before,
            vcpus_after=after,
            target_vcpus=command.target_vcpus,
            allowed_min_vcpus=low,
            allowed_max_vcpus=high,
            host_capacity_vcpus=grant.capacity if grant else None,
            host_committed_vcpus=grant.committed if grant else None,
        )

    def refuse(self, command: ScaleCommand, refusal: Refusal, now: float) -> ScaleResult:
        """The result of a command that never reached the hypervisor."""
        return self.result(command, now, 0.0, None, None, refusal)

    def _retry_after(self, vm: str, failure: Refusal, now: float) -> float:
        return retry_after(failure.code, vm, now=now, backoff=self.backoff, retry_at=failure.retry_at)

    def stored(self, result: ScaleResult) -> bool:
        """A result is in the event log: from now on a copy of its command is a duplicate. Whether the command's
        progress marker is to be removed."""
        self.answered.add(result.command_id, result.time)
        marked = result.command_id in self._marked
        self._marked.discard(result.command_id)
        return marked

    # -- start-up: before any command is taken --------------------------------------------------------------------

    def start_action(self, now: float) -> StartAction:
        """What the actuator is to do next before it takes any command, at clock time ``now``: open the stores,
        recall the answered ids, settle each command a dead actuator left in progress (or only remove its marker,
        if answered), know the pauses in force; then ``TakeCommands``. Pure, as ``next_action``."""
        start = self.start
        if start.phase == "open":
            return Open()
        if start.phase == "recall":
            return Recall(self.recall_since(now))
        if start.phase == "find":
            return FindLeftOver()
        if start.phase == "settle":
            if not start.markers:
                return WatchPauses()
            command, before = start.markers[0]
            # Answered already (the dead actuator stored its result, and died before removing the marker): only
            # unmarked. A command older than the memory is looked up in the log first, as a worker's is: the
            # actuator may have been down longer than the memory reaches back.
            since = self.look_up_since(command, now)
            if since is not None and start.in_log is None:
                return LookUp(command, since)
            return Unmark(command) if command.id in self.answered or start.in_log else Settle(command, before)
        if start.phase == "store":
            assert start.result is not None
            return Store(start.result)
        if start.phase == "unmark":
            return Unmark(start.markers[0][0])
        return TakeCommands()

    def started(self, outcome: StartOutcome, now: float, mono: float) -> None:
        """What carrying out the last start-up action found, at clock time ``now`` and monotonic time ``mono``."""
        start = self.start
        if isinstance(outcome, Opened):
            start.phase = "recall"
        elif isinstance(outcome, Recalled):
            self.recall(outcome.results)
            start.phase = "find"
        elif isinstance(outcome, LeftOver):
            start.markers, start.since, start.phase = deque(outcome.markers), mono, "settle"
        elif isinstance(outcome, Found):
            start.in_log = outcome.in_log
        elif isinstance(outcome, Settled):
            command, before = start.markers[0]
            start.result = self.settled(command, before, outcome.vcpus, now, mono - start.since, outcome.step)
            start.phase = "store"
        elif isinstance(outcome, Stored):
            self.stored(outcome.result)
            start.phase = "unmark"
        elif isinstance(outcome, (Unmarked, Failed)):  # settled, or not this time: its marker stays for the next
            start.markers.popleft()
            start.since, start.in_log, start.result, start.phase = mono, None, None, "settle"
        else:
            assert isinstance(outcome, Watching), outcome
            start.phase = "started"

    # -- restart --------------------------------------------------------------------------------------------------

    def recall(self, results: Iterable[ScaleResult]) -> None:
        """Results read back from the event log at startup, before any command is taken."""
        for result in results:
            self.answered.add(result.command_id, result.time)

    def recall_since(self, now: float) -> float:
        """The clock time from which to read back results at startup."""
        return now - self.rules.keep_s - self.rules.skew_s

    def settled(
        self, command: ScaleCommand, before: int, now_size: int, now: float, duration_s: float, step: int = 1
    ) -> ScaleResult:
        """The result of a command a dead actuator left in progress (and not answered), as things are now: reached
        when within ``step`` of the target (vCPUs: 1; memory: the hypervisor's step, in bytes)."""
        if command.resource is Resource.MEMORY:
            target, unit = command.memory_change()[1], " bytes"
        else:
            target, unit = command.vcpu_change()[1], " vCPUs"
        failure = (
            None
            if abs(now_size - target) < step
            else Refusal(
                ErrorCode.UNKNOWN,
                f"interrupted by an actuator restart: {before} -> {now_size}{unit} of the {target} asked",
            )
        )
        return self.result(command, now, duration_s, before, now_size, failure)


def _grows(plan: Plan | MemoryPlan) -> bool:
    """Whether ``plan`` adds anything: then it is judged against the host's room."""
    return plan.direction > 0 and (isinstance(plan, MemoryPlan) or plan.steps > 0)


def _moves(plan: Plan | MemoryPlan) -> bool:
    """Whether carrying ``plan`` out changes anything."""
    return bool(plan.direction) if isinstance(plan, MemoryPlan) else plan.steps > 0
