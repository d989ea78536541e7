"""One host's memory as the decider plans it: what is committed, the room free now, and which memory grow may
have it. Pure; all times are arguments.

One ``MemoryLedger`` per host whose HostState gives its memory (``capacity_memory_bytes`` and
``committed_memory_bytes``); a host without them grows memory as before, bounded by the actuator alone. Per sample
that carries memory, after the memory engine's step::

    answer = ledger.claim(MemoryClaim(vm, size, engine.pending_target, decision target, decision kind, ...), now)

``answer.target`` is the order to send: the rule's own, a grow cut to the room, or None (deferred, not sent, so the
actuator does not refuse it as ``host-full``). ``answer.events`` are the ``Deferral`` events of the vCPU planner
(``services.decider.pool.DeferralEvent``), with ``resource`` memory and sizes in bytes.

* **Room free now** = capacity − what VMs without a claim have (``committed`` of the last HostState less the
  claimed VMs' sizes then) − Σ ``held``: each claimed VM's size, or the larger size of its grow under way (an order
  in flight, or a grow granted at its last sample). A grow under way that the HostState already counted is not
  counted twice (as the vCPU planner's division does).
* **Shrinks before grows**: a shrink always goes out; the memory it frees counts once the VM's samples show it.
* **A grow that fits** goes out as the rule asked; one that does not is cut to the room, aligned down to the
  device's block, when the cut still adds ``MIN_CUT_BYTES``; else it is deferred and asked again on the next sample.
* **Who is served first**: a VM short of memory now (the rule's ``pressure`` or ``swapping``) before one growing on
  its margin, whatever the ``[[vm]]`` priority (present need before insurance, as the vCPU division has it); then
  the higher priority. A grow takes only the room that the waiting grows served before it do not want. Within one
  rank, whichever VM's sample comes first: a blocked grow does not block the others of its rank.
* The correction for a VM whose sample of the HostState's moment comes after it is the vCPU planner's
  (``services.decider.pool``): the order of samples and HostStates does not matter.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from services.decider.engine import Decision, Held
from services.decider.memory.engine import MemoryEngine
from services.decider.memory.policy import DEFAULT_STEP_BYTES
from services.decider.pool import STALE_INTERVALS, DeferralEvent, deferred_count, oldest_deferral
from shared.messages import DeferralAction, ErrorCode, HostState, Resource
from shared.units import MIB, align_down, format_size

# The rule's decision kinds of a VM short of memory now (services.decider.memory.policy): served first.
URGENT_KINDS = frozenset({"pressure", "swapping"})
# A grow cut to the room is made only if it still adds this much: Linux onlines hot-added memory in 128 MiB blocks
# (x86-64), and a smaller cut costs an actuation and a place in the actuator's rate limit for little use.
MIN_CUT_BYTES = 128 * MIB


class MemoryView(NamedTuple):
    """The host's memory as of ``time``: what it may commit to VMs and what is committed (bytes)."""

    capacity: int
    committed: int
    time: float = 0.0

    @classmethod
    def of(cls, state: HostState) -> MemoryView | None:
        """The HostState's memory, or None when the host's memory is not known (then it is not planned)."""
        if state.capacity_memory_bytes is None or state.committed_memory_bytes is None:
            return None
        return cls(state.capacity_memory_bytes, state.committed_memory_bytes, state.time)


class MemoryClaim(msgspec.Struct, frozen=True):
    """One VM's memory at one sample: ``size`` now, an order in flight to ``pending``, and the rule's order on this
    sample (``target``, None: none) and its ``kind``. ``waiting``: no order only because one is held (in flight, a
    refusal's hold, a pause), so a deferred grow still waits."""

    vm: str
    size: int
    pending: int | None = None
    target: int | None = None
    kind: str = ""
    waiting: bool = False
    priority: int = 0
    interval_s: float = 1.0
    time: float = 0.0  # the sample's
    step: int = DEFAULT_STEP_BYTES


class MemoryAnswer(NamedTuple):
    target: int | None  # the order to send (None: none, or deferred)
    reason: str = ""  # why it was cut or deferred ("": as the rule asked)
    events: tuple[DeferralEvent, ...] = ()


class _Deferred:
    __slots__ = ("granted", "rank", "reason", "since", "wanted")

    def __init__(self, since: float, wanted: int, granted: int, reason: str, rank: tuple[int, int]) -> None:
        self.since, self.wanted, self.granted, self.reason, self.rank = since, wanted, granted, reason, rank


class _Vm:
    __slots__ = ("claim", "counted", "deferred", "held", "seen")

    def __init__(self, claim: MemoryClaim, seen: float) -> None:
        self.claim, self.held, self.seen = claim, claim.size, seen
        self.counted: int | None = None  # its size the last view was taken against, when its sample was older
        self.deferred: _Deferred | None = None


def rank_of(kind: str, priority: int) -> tuple[int, int]:
    """The order in which waiting grows are served: short of memory now first, then the higher priority."""
    return (1 if kind in URGENT_KINDS else 0, priority)


class MemoryLedger:
    """One host's memory: the claims of its sampled VMs, the sums over them, and the grows deferred."""

    def __init__(self, view: MemoryView) -> None:
        self.view = view
        self.vms: dict[str, _Vm] = {}
        self.size = 0  # Σ sizes of the claims
        self.held = 0  # Σ held: the size, or more while a grow is under way
        self.other = 0  # committed by VMs without a claim, as of the last view
        self._unclaimed = 0  # the same before it is floored at 0 (corrections after a view add up exactly)
        self._observe(view)

    # The host

    def observe_host(self, view: MemoryView, now: float) -> tuple[DeferralEvent, ...]:
        """A new view of the host's memory. VMs no longer sampled are dropped: their deferrals end."""
        gone = [name for name, vm in self.vms.items() if now - vm.seen > STALE_INTERVALS * vm.claim.interval_s]
        events = tuple(event for name in gone for event in self.forget(name))
        self._observe(view)
        for vm in self.vms.values():
            vm.counted = vm.claim.size if vm.claim.time < view.time - vm.claim.interval_s / 2 else None
        return events

    def learn_full(self, capacity: int, committed: int, time: float) -> None:
        """An actuator refused a memory grow for want of room and said what it saw at ``time``: believe it."""
        self._observe(MemoryView(capacity, committed, time))

    def _observe(self, view: MemoryView) -> None:
        self.view = view
        self._set_other(view.committed - self.size)

    def _set_other(self, unclaimed: int) -> None:
        self._unclaimed = unclaimed
        self.other = unclaimed if unclaimed > 0 else 0

    def room(self) -> int:
        """Bytes free now for a grow (negative: more committed than the capacity)."""
        # A VM whose sample of the view's moment is still to come may be counted in the view at the size this
        # ledger granted it (a grow that landed): that is its own held memory, not another VM's.
        landed = sum(
            vm.held - vm.counted for vm in self.vms.values() if vm.counted is not None and vm.held > vm.counted
        )
        return self.view.capacity - self.other - self.held + min(self.other, landed)

    # The VMs

    def claim(self, claim: MemoryClaim, now: float) -> MemoryAnswer:
        """Take ``claim`` for its VM: the order it may send now, and the deferral events."""
        vm = self.vms.get(claim.vm)
        if vm is None:
            vm = self.vms[claim.vm] = _Vm(claim, now)
            # The last view counted its memory among that of VMs without a claim.
            self._set_other(self._unclaimed - claim.size)
            self.size += claim.size
            self.held += claim.size
        elif vm.counted is not None:
            self._set_other(self._unclaimed + vm.counted - claim.size)
            vm.counted = None
        pending = claim.pending
        held = claim.size if pending is None or pending < claim.size else pending
        self.size += claim.size - vm.claim.size
        self.held += held - vm.held
        vm.claim, vm.held, vm.seen = claim, held, now
        target = claim.target
        if target is None or target <= held:
            # A shrink goes out whatever the host; its memory is free once a sample shows it.
            if vm.deferred is not None and not claim.waiting:
                return MemoryAnswer(target, "", self._end(vm, DeferralAction.DROPPED, "no longer wanted"))
            return MemoryAnswer(target)
        rank = rank_of(claim.kind, claim.priority)
        ahead = sum(
            max(0, other.deferred.wanted - other.held)
            for name, other in self.vms.items()
            if other.deferred is not None and name != claim.vm and other.deferred.rank > rank
        )
        free = self.room() - ahead
        if target - held <= free:
            self.held += target - held
            vm.held = target
            if vm.deferred is None:
                return MemoryAnswer(target)
            return MemoryAnswer(target, "", self._end(vm, DeferralAction.GRANTED, f"granted: {format_size(target)}"))
        cut = align_down(held + free, claim.step) if free > 0 else held
        if cut - held < MIN_CUT_BYTES:
            cut = held
        reason = self._why(claim, held, cut, ahead)
        if cut > held:
            self.held += cut - held
            vm.held = cut
        events = self._track(vm, claim, held, cut, rank, reason, now)
        return MemoryAnswer(cut if cut > held else None, reason, events)

    def forget(self, vm: str) -> tuple[DeferralEvent, ...]:
        """``vm`` is gone: its claim leaves (its memory committed until the next view says otherwise)."""
        entry = self.vms.pop(vm, None)
        if entry is None:
            return ()
        self.size -= entry.claim.size
        self.held -= entry.held
        self._set_other(self._unclaimed + entry.claim.size)
        return self._end(entry, DeferralAction.DROPPED, "gone")

    def deferred(self) -> int:
        """Memory grows deferred now (cut short or not sent)."""
        return deferred_count(self.vms.values())

    def oldest_deferral(self, now: float) -> float:
        """Seconds the longest-deferred memory grow has waited (0: none)."""
        return oldest_deferral(self.vms.values(), now)

    def _why(self, claim: MemoryClaim, held: int, cut: int, ahead: int) -> str:
        assert claim.target is not None
        view = self.view
        committed = self.other + self.held
        wanted = claim.target - held
        text = (
            f"host memory full: capacity {format_size(view.capacity)}, {format_size(committed)} committed; "
            f"{format_size(claim.target - cut)} of {format_size(wanted)} wanted deferred"
        )
        if ahead > 0:
            text += f" ({format_size(ahead)} kept for grows served first)"
        return text

    def _track(
        self, vm: _Vm, claim: MemoryClaim, held: int, granted: int, rank: tuple[int, int], reason: str, now: float
    ) -> tuple[DeferralEvent, ...]:
        assert claim.target is not None
        if vm.deferred is None:
            vm.deferred = _Deferred(now, claim.target, granted, reason, rank)
            return (self._event(vm, DeferralAction.DEFERRED, vm.deferred, held),)
        d = vm.deferred
        d.wanted, d.granted, d.reason, d.rank = claim.target, granted, reason, rank
        return ()

    def _end(self, vm: _Vm, action: DeferralAction, reason: str) -> tuple[DeferralEvent, ...]:
        deferred = vm.deferred
        if deferred is None:
            return ()
        vm.deferred = None
        granted = vm.held if action is DeferralAction.GRANTED else deferred.granted
        wanted = granted if action is DeferralAction.GRANTED else deferred.wanted
        ended = _Deferred(deferred.since, wanted, granted, reason, deferred.rank)
        return (self._event(vm, action, ended, vm.claim.size),)

    def _event(self, vm: _Vm, action: DeferralAction, deferred: _Deferred, size: int) -> DeferralEvent:
        return DeferralEvent(
            vm.claim.vm,
            action,
            size,
            deferred.wanted,
            deferred.granted,
            deferred.since,
            vm.claim.priority,
            deferred.reason,
            Resource.MEMORY,
        )


def within_host(
    ledger: MemoryLedger,
    vm: str,
    size: int,
    engine: MemoryEngine,
    decision: Decision | None,
    *,
    priority: int,
    interval_s: float,
    time: float,
    now: float,
) -> tuple[Decision | None, tuple[DeferralEvent, ...]]:
    """The memory engine's ``decision`` for ``vm`` (``size`` bytes now, sampled at ``time``) within its host's
    memory: as it is, a grow cut to the room, or None (deferred: held as ``host-full`` on the engine, and asked again
    on the next sample, so the actuator does not refuse it); with the deferral events. The decider and the pool
    benchmark both take a memory decision through this."""
    waiting = decision is None and (engine.pending_target is not None or engine.held is not None)
    claim = MemoryClaim(
        vm,
        size,
        engine.pending_target,
        None if decision is None else decision.target,
        "" if decision is None else decision.kind,
        waiting=waiting,
        priority=priority,
        interval_s=interval_s,
        time=time,
    )
    answer = ledger.claim(claim, now)
    if decision is None or answer.target == decision.target:
        return decision, answer.events
    reason = f"{decision.reason}; {answer.reason}"
    if answer.target is None:
        engine.held = Held(ErrorCode.HOST_FULL.value, reason)
        return None, answer.events
    return decision._replace(target=answer.target, reason=reason), answer.events
