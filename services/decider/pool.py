"""Each host planned as a whole: its VMs' claims, its capacity, and what each VM may have now. Pure.

One ``HostPlanner`` per host whose capacity the decider knows (the host's ``HostState``, or an actuator's
host-full result); a host without one is planned as before, VM by VM. All times are arguments. Per sample:

    proposal = engine.propose(obs)                                    # what the policy wants and needs
    answer = planner.claim(claim_of(proposal, settings, engine.pending_target), now)
    decision = engine.decide(proposal, paused, answer.limit)          # the limit, then holds and rails

``answer.events`` say when a deferral starts, is granted or is dropped (``Deferral`` messages): the VM's, and
those of VMs found gone meanwhile.

* **No contention** (every VM's ``max(want, held)`` and the head of the waiting queue fit within the
  insurance limit, capacity × watermark): no limit at all, so decisions are those of a decider that knows no
  host. Running sums make this check O(1) per sample.
* **Contention**: the host is divided (``services.decider.division``: floors, present need by priority and
  weighted fairness, then insurance) at most once per sampling interval, with hysteresis on the caps. A VM
  above its cap is reclaimed (a shrink through the engine's rails); a VM below it may grow towards it.
* **Shrinks before grows**: a grow is granted only into room free now, capacity − Σ ``held`` (what each VM has,
  or is being given: an order in flight, or a grow granted at its last sample). Cores a reclaim frees count
  once the VM's samples show them; meanwhile the grow waits, deferred.
* **A warming VM needs what it has** (``claim_of``): its rails keep it and its demand is barely known, so the
  division counts on no cut of it; a cut of any other VM reaches its engine as a reclaim even when its policy
  wants less still, so no rail of its own keeps cores the division gave away.
* **A cut holds**: a VM cut below what it held gets no more than its cut (a VM that is not preemptible: no more
  than the larger of its cut and its need) until ``CUT_HOLD_S`` after the last division that still cut it, so
  the cores it lost are not regrown into the room the next second, with or without contention.

The capacity left to the planned VMs is the collector's view: what VMs without a claim (another decider's, ones
whose rule is ``off``, or not sampled yet) have is ``committed`` minus what the planned VMs had at the moment of
the last HostState. A VM whose sample of that moment comes after the HostState corrects it then (the order in
which a host's samples and its HostState are handled does not matter); a VM's first claim takes its vCPUs out
of it, and a VM forgotten puts them back until the next view.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol

import msgspec

from services.decider.division import Share, divide, whole
from services.decider.engine import Limit, Proposal
from shared.config.rules import VmSettings
from shared.messages import DeferralAction, HostState, Resource
from shared.pool import insurance_of

# A VM with no sample for this many of its sampling intervals is gone (stopped, or another decider's now).
STALE_INTERVALS = 5.0
# A VM cut below what it held (reclaimed, or preempted) is not given back more than its cut for this long after the
# last division that still cut it (the default policy's stabilisation window after a shrink, ``stabilise_s``).
CUT_HOLD_S = 300.0


class _Since(Protocol):
    @property
    def since(self) -> float: ...


class _Deferring(Protocol):
    @property
    def deferred(self) -> _Since | None: ...


def deferred_count(vms: Iterable[_Deferring]) -> int:
    """How many of ``vms`` have a grow deferred now (the vCPU planner's and the memory ledger's)."""
    return sum(1 for vm in vms if vm.deferred is not None)


def oldest_deferral(vms: Iterable[_Deferring], now: float) -> float:
    """Seconds the longest-deferred grow of ``vms`` has waited at ``now`` (0: none)."""
    since = [vm.deferred.since for vm in vms if vm.deferred is not None]
    return max(0.0, now - min(since)) if since else 0.0


class HostView(NamedTuple):
    """What the decider knows of a host at ``time``: its capacity, what is committed on it, the insurance limit,
    and the requested vCPUs of the first job waiting to start on it (None: no queue)."""

    capacity: int
    committed: int
    insurance: int
    head: int | None = None
    time: float = 0.0

    @classmethod
    def of(cls, state: HostState) -> HostView:
        return cls(
            state.capacity_vcpus,
            state.committed_vcpus,
            insurance_of(state.capacity_vcpus, state.watermark),
            state.next_waiting_vcpus if state.waiting_vms else None,
            state.time,
        )


class Claim(msgspec.Struct, frozen=True):
    """One VM's claim at one sample: ``online`` vCPUs, an order in flight to ``pending``, and what its policy
    wants and needs (``minimum ≤ need ≤ want``); priority, weight and preemptible from its ``[[vm]]`` rule."""

    vm: str
    online: int
    minimum: int
    need: int
    want: int
    pending: int | None = None
    priority: int = 0
    weight: float = 1.0
    preemptible: bool = False
    interval_s: float = 1.0
    time: float = 0.0  # the sample's
    urgent: bool = False  # made on an urgent sample: its interval is the part since the last sample, not the cadence


def claim_of(vm: str, proposal: Proposal, settings: VmSettings, pending: int | None, *, pinned: bool = False) -> Claim:
    """The claim of ``vm`` after ``proposal``. ``pinned``: the VM will not be resized whatever it wants (paused,
    or its rule only recommends), so it claims what it has. A VM in its warm-up needs what it has: its demand is
    not known yet (its need would be an underestimate, and a cut on it is undone by the first burst), and its
    rails keep it anyway; only a higher priority may take it if it is preemptible."""
    obs = proposal.obs
    n = obs.vcpus
    if pinned:
        return Claim(vm, n, n, n, n, pending, interval_s=obs.interval_s, time=obs.time, urgent=obs.urgent)
    need, want = proposal.need, proposal.want
    if proposal.warming:
        need, want = max(need, n), max(want, n)
    return Claim(
        vm,
        n,
        obs.min_vcpus,
        need,
        want,
        pending,
        settings.priority,
        settings.weight,
        settings.preemptible,
        obs.interval_s,
        obs.time,
        obs.urgent,
    )


class DeferralEvent(NamedTuple):
    """A VM's deferred grow started, was granted in full, or was dropped (``shared.messages.Deferral``). Sizes are
    in the ``resource``'s unit: vCPUs, or bytes of memory (``services.decider.memory.ledger``)."""

    vm: str
    action: DeferralAction
    vcpus: int
    wanted: int
    granted: int
    since: float
    priority: int
    reason: str
    resource: Resource = Resource.VCPU


class Answer(NamedTuple):
    limit: Limit | None
    events: tuple[DeferralEvent, ...] = ()


FREE = Answer(None)  # no limit, nothing to record


class _Deferred:
    __slots__ = ("granted", "reason", "since", "wanted")

    def __init__(self, since: float, wanted: int, granted: int, reason: str) -> None:
        self.since, self.wanted, self.granted, self.reason = since, wanted, granted, reason


class _Vm:
    """A VM's last claim, what it holds (``held``), and ``claimed``: the larger of what it wants and holds.
    ``counted``: the online vCPUs the last view of the host was taken against, when its sample was older."""

    __slots__ = ("claim", "claimed", "counted", "cut", "cut_until", "deferred", "held", "seen")

    def __init__(self, claim: Claim, seen: float) -> None:
        self.claim, self.held, self.claimed, self.seen = claim, claim.online, max(claim.want, claim.online), seen
        self.counted: int | None = None
        self.deferred: _Deferred | None = None
        # The cap of its last cut (None: not cut), kept until ``cut_until`` (see ``CUT_HOLD_S``).
        self.cut: int | None = None
        self.cut_until = float("-inf")


class HostPlanner:
    """One host's plan: its VMs' claims, running sums over them, and the division while the host is full."""

    def __init__(self, view: HostView, cut_hold_s: float = CUT_HOLD_S) -> None:
        self.view = view
        self.cut_hold_s = cut_hold_s
        self.vms: dict[str, _Vm] = {}
        self.online = 0  # Σ online vCPUs of the claims
        self.held = 0  # Σ held: online, or more while an order or a granted grow is under way
        self.claimed = 0  # Σ max(want, held)
        self.other = 0  # committed on the host by VMs without a claim, as of the last view
        self._unclaimed = 0  # the same before it is floored at 0 (corrections after a view add up exactly)
        self.capacity = 0  # the vCPUs the planned VMs may have in all: the host's capacity less the other VMs'
        self.insurance = 0  # ... and the insurance limit, less the other VMs'
        self.head = 0  # the requested size of the first waiting job (0: none)
        self.caps: dict[str, int] = {}  # the last division's caps
        self.divided_at = float("-inf")
        self.head_admitted = False
        self._observe(view)

    # The host

    def observe_host(self, view: HostView, now: float) -> tuple[DeferralEvent, ...]:
        """A new view of the host (its collector's HostState). VMs no longer sampled are dropped: their deferrals
        end."""
        events = self._purge(now)
        self._observe(view)
        # A VM whose sample of the view's moment is still to come: what it has then corrects the other VMs' share.
        for vm in self.vms.values():
            vm.counted = vm.claim.online if vm.claim.time < view.time - vm.claim.interval_s / 2 else None
        return events

    def learn_full(self, capacity: int, committed: int, time: float) -> None:
        """An actuator refused a grow for want of room and said what it saw at ``time``: believe it, and divide
        afresh."""
        self._observe(self.view._replace(capacity=capacity, committed=committed, time=time))
        self.divided_at = float("-inf")

    def _observe(self, view: HostView) -> None:
        self.view = view
        self.head = view.head or 0
        self._set_other(view.committed - self.online)

    def _set_other(self, unclaimed: int) -> None:
        self._unclaimed = unclaimed
        self.other = other = unclaimed if unclaimed > 0 else 0
        self.capacity = self.view.capacity - other
        self.insurance = min(self.view.insurance, self.view.capacity) - other

    @property
    def contended(self) -> bool:
        return self.claimed + self.head > self.insurance

    # The VMs

    def claim(self, claim: Claim, now: float) -> Answer:
        """Take ``claim`` for its VM; what the VM may have now (no limit: whatever its range allows)."""
        vm = self.vms.get(claim.vm)
        if vm is not None and claim.urgent and claim.interval_s < vm.claim.interval_s:
            # The VM's cadence, which judges it gone and paces the division, stays that of its regular samples.
            claim = msgspec.structs.replace(claim, interval_s=vm.claim.interval_s)
        if vm is None:
            vm = self.vms[claim.vm] = _Vm(claim, now)
            # The last view counted its vCPUs among those of VMs without a claim (if it started since, the next
            # view puts that right; meanwhile the division still keeps the room for it as the queue's head).
            self._set_other(self._unclaimed - claim.online)
            self.online += claim.online
            self.held += claim.online
            self.claimed += vm.claimed
        elif vm.counted is not None:
            self._set_other(self._unclaimed + vm.counted - claim.online)
            vm.counted = None
        online, pending, want = claim.online, claim.pending, claim.want
        held = online if pending is None or pending < online else pending
        claimed = want if want > held else held
        self.online += online - vm.claim.online
        self.held += held - vm.held
        self.claimed += claimed - vm.claimed
        vm.claim, vm.held, vm.claimed, vm.seen = claim, held, claimed, now
        cap: int | None = None
        gone: tuple[DeferralEvent, ...] = ()
        if self.claimed + self.head > self.insurance:  # contended
            if now - self.divided_at >= claim.interval_s:
                gone = self._divide(now)
            cap = self.caps.get(claim.vm)
            if cap is None:  # came after the division: it grows once the next one counts it
                if want <= held:
                    return Answer(None, gone)
                return Answer(Limit(held, "host full: its share comes with the next plan", claim.preemptible), gone)
        share = cap  # the division's cap (None: not divided)
        back: int | None = None
        if vm.cut is not None:
            if now >= vm.cut_until:
                vm.cut = None
            else:
                back = self._held_back(vm)
                if cap is None or back < cap:
                    cap = back
                else:
                    back = None  # the division's own cap is lower: it says why
        room = self.capacity - self.held  # free now
        allowed = want if cap is None or cap > want else cap
        if allowed > held:
            if allowed > held + room:
                allowed = held + room if room > 0 else held
            # A grant: its room is taken until the VM's next sample says what became of it.
            self.held += allowed - held
            vm.held = allowed
            vm.claimed = want if want > allowed else allowed
        if allowed < held:  # a cut: the cores it loses stay with the claim that took them
            vm.cut = allowed if vm.cut is None or now >= vm.cut_until or allowed < vm.cut else vm.cut
            vm.cut_until = now + self.cut_hold_s
        if allowed >= want:
            if share is not None and share < held:
                # The division gave cores the VM holds to another claim, and its policy would give them back anyway:
                # a cut all the same, so that no rail of its own keeps them from the claim they were divided to.
                reason = self._why(claim, held, allowed, share)
                limit = Limit(allowed, reason, claim.preemptible)
                return Answer(limit, gone + self._track(vm, held, allowed, reason, now))
            if vm.deferred is None and not gone:
                return FREE
            return Answer(None, gone + self._track(vm, held, allowed, "", now))
        if back is not None and allowed == back and allowed >= held:
            left = vm.cut_until - now
            reason = f"host full: its cores went to another's claim; at most {back} vCPUs for {left:.0f} s more"
        else:
            reason = self._why(claim, held, allowed, cap)
        return Answer(Limit(allowed, reason, claim.preemptible), gone + self._track(vm, held, allowed, reason, now))

    def forget(self, vm: str) -> tuple[DeferralEvent, ...]:
        """``vm`` is gone (stopped, or handed over to another decider): its claim leaves, its deferral ends."""
        entry = self.vms.pop(vm, None)
        if entry is None:
            return ()
        self.online -= entry.claim.online
        self._set_other(self._unclaimed + entry.claim.online)  # committed until the next view says otherwise
        self.held -= entry.held
        self.claimed -= entry.claimed
        self.caps.pop(vm, None)
        return self._end(entry, DeferralAction.DROPPED, "gone")

    def deferred(self) -> int:
        """Grows deferred now."""
        return deferred_count(self.vms.values())

    def oldest_deferral(self, now: float) -> float:
        """Seconds the longest-deferred grow has waited (0: none)."""
        return oldest_deferral(self.vms.values(), now)

    def _purge(self, now: float) -> tuple[DeferralEvent, ...]:
        gone = [name for name, vm in self.vms.items() if now - vm.seen > STALE_INTERVALS * vm.claim.interval_s]
        return tuple(event for name in gone for event in self.forget(name))

    def _divide(self, now: float) -> tuple[DeferralEvent, ...]:
        """Divide the host afresh among the VMs still sampled; the deferrals of those that are not end."""
        gone = self._purge(now)
        shares = [
            Share(name, vm.held, c.minimum, c.need, c.want, c.priority, c.weight, c.preemptible)
            for name, vm in self.vms.items()
            for c in (vm.claim,)
        ]
        # A VM whose sample of the view's moment is still to come may be counted in the view with the vCPUs this
        # planner granted it (an order in flight): they are its, not another VM's, so they are not cut for.
        granted = sum(
            vm.held - vm.counted for vm in self.vms.values() if vm.counted is not None and vm.held > vm.counted
        )
        mine = min(self.other, granted)
        division = divide(shares, self.capacity + mine, self.insurance + mine, self.head)
        self.caps = whole(shares, division, self.caps)
        self.divided_at = now
        for name, vm in self.vms.items():
            cap = self.caps[name]
            if vm.cut is not None and cap <= vm.cut and cap < vm.claim.want and now < vm.cut_until:
                vm.cut_until = now + self.cut_hold_s  # still kept at its cut: the claim that took its cores lasts
        self.head_admitted = division.head_admitted
        return gone

    def _held_back(self, vm: _Vm) -> int:
        """The cap of a VM cut within the hold: no more than its cut (a VM that is not preemptible lost only what
        it held above its need, so it may still grow to what it needs now)."""
        assert vm.cut is not None
        c = vm.claim
        return vm.cut if c.preemptible else max(vm.cut, c.need)

    def _why(self, claim: Claim, held: int, allowed: int, cap: int | None) -> str:
        c = self.view.capacity
        wanted = self.other + self.claimed + self.head
        queue = f" and the next waiting job's {self.head}" if self.head_admitted and self.head else ""
        if allowed >= held:
            deferred = f"{claim.want - allowed} of {claim.want - held} wanted vCPUs deferred"
            if cap is not None and allowed == cap:
                return f"host full: capacity {c}, {wanted} wanted; its share is {cap}; {deferred}"
            committed = self.other + self.held
            return f"host full: capacity {c}, {committed} committed; {deferred}"
        if allowed < max(claim.minimum, min(held, claim.need)):
            return f"host full: capacity {c}, {wanted} wanted; preempted for a higher priority's need{queue}"
        burst = f"{held - allowed} vCPUs held against a burst go to present need"
        return f"host full: capacity {c}, {wanted} wanted; {burst}{queue}"

    def _track(self, vm: _Vm, held: int, allowed: int, reason: str, now: float) -> tuple[DeferralEvent, ...]:
        want = vm.claim.want
        if want > held and allowed < want:
            if vm.deferred is None:
                vm.deferred = _Deferred(now, want, allowed, reason)
                return (self._event(vm, DeferralAction.DEFERRED, vm.deferred),)
            vm.deferred.wanted, vm.deferred.granted, vm.deferred.reason = want, allowed, reason
            return ()
        if vm.deferred is None:
            return ()
        if want > held:
            return self._end(vm, DeferralAction.GRANTED, f"granted: {allowed} vCPUs")
        return self._end(vm, DeferralAction.DROPPED, f"no longer wanted: {want} vCPUs")

    def _end(self, vm: _Vm, action: DeferralAction, reason: str) -> tuple[DeferralEvent, ...]:
        deferred = vm.deferred
        if deferred is None:
            return ()
        vm.deferred = None
        granted = vm.claim.want if action is DeferralAction.GRANTED else deferred.granted
        return (self._event(vm, action, _Deferred(deferred.since, vm.claim.want, granted, reason)),)

    def _event(self, vm: _Vm, action: DeferralAction, deferred: _Deferred) -> DeferralEvent:
        return DeferralEvent(
            vm.claim.vm,
            action,
            vm.claim.online,
            deferred.wanted,
            deferred.granted,
            deferred.since,
            vm.claim.priority,
            deferred.reason,
        )
