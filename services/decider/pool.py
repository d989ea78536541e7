"""Each host planned as a whole: its VMs' claims, its capacity, and what each VM may have now. Pure.

One ``HostPlanner`` per host whose capacity the decider knows (the host's ``HostState``, or an actuator's
host-full result); a host without one is planned as before, VM by VM. All times are arguments. Per sample:

    proposal = engine.propose(obs)                                    # what the policy wants and needs
    answer = planner.claim(claim_of(proposal, settings, engine.pending_target), now)
    decision = engine.decide(proposal, paused, answer.limit)          # the limit, then holds and rails

``answer.events`` are the VM's deferrals that start, are granted or are dropped (``Deferral`` messages).

* **No contention** (every VM's ``max(want, held)`` and the head of the waiting queue fit within the
  insurance limit, capacity × watermark): no limit at all, so decisions are those of a decider that knows no
  host. Running sums make this check O(1) per sample.
* **Contention**: the host is divided (``services.decider.division``: floors, present need by priority and
  weighted fairness, then insurance) at most once per sampling interval, with hysteresis on the caps. A VM
  above its cap is reclaimed (a shrink through the engine's rails); a VM below it may grow towards it.
* **Shrinks before grows**: a grow is granted only into room free now, capacity − Σ ``held`` (what each VM has,
  or is being given: an order in flight, or a grow granted at its last sample). Cores a reclaim frees count
  once the VM's samples show them; meanwhile the grow waits, deferred.

The capacity left to the planned VMs is the collector's view: what VMs without a claim (another decider's, ones
whose rule is ``off``, or not sampled yet) have is ``committed`` minus what the planned VMs had at the last
HostState; a VM's first claim takes its vCPUs out of it, a VM forgotten puts them back until the next view.
"""

from __future__ import annotations

from typing import NamedTuple

from services.decider.division import Share, divide, whole
from services.decider.engine import Limit, Proposal
from shared.config.rules import VmSettings
from shared.messages import DeferralAction, HostState
from shared.pool import insurance_of

# A VM with no sample for this many of its sampling intervals is gone (stopped, or another decider's now).
STALE_INTERVALS = 5.0


class HostView(NamedTuple):
    """What the decider knows of a host: its capacity, what is committed on it, the insurance limit, and the
    requested vCPUs of the first job waiting to start on it (None: no queue)."""

    capacity: int
    committed: int
    insurance: int
    head: int | None = None

    @classmethod
    def of(cls, state: HostState) -> HostView:
        return cls(
            state.capacity_vcpus,
            state.committed_vcpus,
            insurance_of(state.capacity_vcpus, state.watermark),
            state.next_waiting_vcpus if state.waiting_vms else None,
        )


class Claim(NamedTuple):
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


def claim_of(vm: str, proposal: Proposal, settings: VmSettings, pending: int | None, *, pinned: bool = False) -> Claim:
    """The claim of ``vm`` after ``proposal``. ``pinned``: the VM will not be resized whatever it wants (paused,
    or its rule only recommends), so it claims what it has."""
    obs = proposal.obs
    if pinned:
        return Claim(vm, obs.vcpus, obs.vcpus, obs.vcpus, obs.vcpus, pending, interval_s=obs.interval_s)
    return Claim(
        vm,
        obs.vcpus,
        obs.min_vcpus,
        proposal.need,
        proposal.want,
        pending,
        settings.priority,
        settings.weight,
        settings.preemptible,
        obs.interval_s,
    )


class DeferralEvent(NamedTuple):
    """A VM's deferred grow started, was granted in full, or was dropped (``shared.messages.Deferral``)."""

    vm: str
    action: DeferralAction
    vcpus: int
    wanted: int
    granted: int
    since: float
    priority: int
    reason: str


class Answer(NamedTuple):
    limit: Limit | None
    events: tuple[DeferralEvent, ...] = ()


class _Deferred:
    __slots__ = ("granted", "reason", "since", "wanted")

    def __init__(self, since: float, wanted: int, granted: int, reason: str) -> None:
        self.since, self.wanted, self.granted, self.reason = since, wanted, granted, reason


class _Vm:
    __slots__ = ("claim", "deferred", "held", "seen")

    def __init__(self, claim: Claim, held: int, seen: float) -> None:
        self.claim, self.held, self.seen = claim, held, seen
        self.deferred: _Deferred | None = None

    @property
    def claimed(self) -> int:
        return max(self.claim.want, self.held)


class HostPlanner:
    """One host's plan: its VMs' claims, running sums over them, and the division while the host is full."""

    def __init__(self, view: HostView) -> None:
        self.view = view
        self.vms: dict[str, _Vm] = {}
        self.online = 0  # Σ online vCPUs of the claims
        self.held = 0  # Σ held: online, or more while an order or a granted grow is under way
        self.claimed = 0  # Σ max(want, held)
        self.other = 0  # committed on the host by VMs without a claim, as of the last view
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
        return events

    def learn_full(self, capacity: int, committed: int) -> None:
        """An actuator refused a grow for want of room and said what it saw: believe it, and divide afresh."""
        self._observe(self.view._replace(capacity=capacity, committed=committed))
        self.divided_at = float("-inf")

    def _observe(self, view: HostView) -> None:
        self.view = view
        self.other = max(0, view.committed - self.online)

    @property
    def capacity(self) -> int:
        """The vCPUs the planned VMs may have in all."""
        return self.view.capacity - self.other

    @property
    def insurance(self) -> int:
        return min(self.view.insurance, self.view.capacity) - self.other

    @property
    def contended(self) -> bool:
        return self.claimed + (self.view.head or 0) > self.insurance

    # The VMs

    def claim(self, claim: Claim, now: float) -> Answer:
        """Take ``claim`` for its VM; what the VM may have now (no limit: whatever its range allows)."""
        vm = self.vms.get(claim.vm)
        if vm is None:
            vm = self.vms[claim.vm] = _Vm(claim, claim.online, now)
            # Its vCPUs were among those committed by VMs without a claim.
            self.other = max(0, self.other - claim.online)
            self.online += claim.online
            self.held += claim.online
            self.claimed += vm.claimed
        held = max(claim.online, claim.pending or 0)
        self._set(vm, claim, held)
        vm.seen = now
        room = self.capacity - self.held  # free now
        cap: int | None = None
        if self.contended:
            if now - self.divided_at >= claim.interval_s:
                self._divide(now)
            cap = self.caps.get(claim.vm)
            if cap is None:  # came after the division: it grows once the next one counts it
                limited = claim.want > held
                return Answer(
                    Limit(held, "host full: its share comes with the next plan", claim.preemptible) if limited else None
                )
        allowed = claim.want if cap is None else min(claim.want, cap)
        if allowed > held:
            allowed = min(allowed, held + max(0, room))
        if allowed > held:  # a grant: its room is taken until the VM's next sample says what became of it
            self._set(vm, claim, allowed)
        if allowed >= claim.want:
            return Answer(None, self._track(vm, held, allowed, "", now))
        reason = self._why(claim, held, allowed, cap)
        return Answer(Limit(allowed, reason, claim.preemptible), self._track(vm, held, allowed, reason, now))

    def forget(self, vm: str) -> tuple[DeferralEvent, ...]:
        """``vm`` is gone (stopped, or handed over to another decider): its claim leaves, its deferral ends."""
        entry = self.vms.pop(vm, None)
        if entry is None:
            return ()
        self.online -= entry.claim.online
        self.other += entry.claim.online  # committed until the host's next view says otherwise
        self.held -= entry.held
        self.claimed -= entry.claimed
        self.caps.pop(vm, None)
        return self._end(entry, DeferralAction.DROPPED, "gone")

    def deferred(self) -> int:
        """Grows deferred now."""
        return sum(1 for vm in self.vms.values() if vm.deferred is not None)

    def oldest_deferral(self, now: float) -> float:
        """Seconds the longest-deferred grow has waited (0: none)."""
        since = [vm.deferred.since for vm in self.vms.values() if vm.deferred is not None]
        return max(0.0, now - min(since)) if since else 0.0

    def _set(self, vm: _Vm, claim: Claim, held: int) -> None:
        self.online += claim.online - vm.claim.online
        self.claimed -= vm.claimed
        self.held += held - vm.held
        vm.claim, vm.held = claim, held
        self.claimed += vm.claimed

    def _purge(self, now: float) -> tuple[DeferralEvent, ...]:
        gone = [name for name, vm in self.vms.items() if now - vm.seen > STALE_INTERVALS * vm.claim.interval_s]
        return tuple(event for name in gone for event in self.forget(name))

    def _divide(self, now: float) -> None:
        self._purge(now)
        shares = [
            Share(name, vm.held, c.minimum, c.need, c.want, c.priority, c.weight, c.preemptible)
            for name, vm in self.vms.items()
            for c in (vm.claim,)
        ]
        division = divide(shares, self.capacity, self.insurance, self.view.head)
        self.caps = whole(shares, division, self.caps)
        self.divided_at = now
        self.head_admitted = division.head_admitted

    def _why(self, claim: Claim, held: int, allowed: int, cap: int | None) -> str:
        c = self.view.capacity
        wanted = self.other + self.claimed + (self.view.head or 0)
        queue = f" and the next waiting job's {self.view.head}" if self.head_admitted and self.view.head else ""
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
