"""One host planned as a whole (services.decider.pool.HostPlanner): no limit while the host has room, shrinks
before grows, deferrals that start, are granted and are dropped, a division at most once per interval, caps
that hold still for noise, and (hypothesis) never more than the capacity. Pure."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from services.decider.pool import CUT_HOLD_S, Claim, HostPlanner, HostView
from shared.messages import DeferralAction, HostState


def planner(capacity: int, committed: int = 0, insurance: int | None = None, head: int | None = None) -> HostPlanner:
    return HostPlanner(HostView(capacity, committed, capacity if insurance is None else insurance, head))


def test_no_limit_and_no_deferral_while_the_host_has_room() -> None:
    host = planner(16, committed=8)
    assert host.claim(Claim("a", 4, 1, 8, 8), 0.0) == (None, ())
    assert host.claim(Claim("b", 4, 1, 4, 4), 0.0) == (None, ())
    assert not host.contended
    assert host.deferred() == 0


def test_a_grow_waits_for_a_reclaim_to_show_then_is_granted() -> None:
    host = planner(16, committed=16)
    assert host.claim(Claim("idle", 8, 1, 2, 8), 0.0).limit is None  # fits until busy wants more
    busy = host.claim(Claim("busy", 8, 1, 12, 12), 0.0)
    assert busy.limit is not None and busy.limit.vcpus == 8  # no room now: nothing yet
    assert busy.limit.reason == "host full: capacity 16, 16 committed; 4 of 4 wanted vCPUs deferred"
    [started] = busy.events
    assert (started.action, started.vcpus, started.wanted, started.granted, started.since) == (
        DeferralAction.DEFERRED,
        8,
        12,
        8,
        0.0,
    )
    reclaim = host.claim(Claim("idle", 8, 1, 2, 8), 1.0).limit
    assert reclaim is not None and reclaim.vcpus == 4
    assert "4 vCPUs held against a burst go to present need" in reclaim.reason
    # the order to shrink went out, its sample has not shown it yet: the grow still waits
    assert host.claim(Claim("idle", 8, 1, 2, 8, pending=4), 1.5).limit is not None
    still = host.claim(Claim("busy", 8, 1, 12, 12), 2.0)
    assert still.limit is not None and still.limit.vcpus == 8 and still.events == ()
    assert host.deferred() == 1 and host.oldest_deferral(2.0) == 2.0
    host.claim(Claim("idle", 4, 1, 2, 4), 3.0)  # the shrink shows (and its policy holds it there)
    granted = host.claim(Claim("busy", 8, 1, 12, 12), 3.0)
    assert granted.limit is None
    [ended] = granted.events
    assert (ended.action, ended.wanted, ended.granted, ended.since) == (DeferralAction.GRANTED, 12, 12, 0.0)
    assert host.deferred() == 0


def test_a_deferral_is_dropped_when_the_vm_no_longer_wants_it_or_is_gone() -> None:
    host = planner(8, committed=8)
    host.claim(Claim("a", 4, 1, 4, 4), 0.0)
    assert host.claim(Claim("b", 4, 1, 6, 6), 0.0).events[0].action is DeferralAction.DEFERRED
    [dropped] = host.claim(Claim("b", 4, 1, 4, 4), 1.0).events
    assert dropped.action is DeferralAction.DROPPED
    host.claim(Claim("b", 4, 1, 6, 6), 2.0)
    [gone] = host.forget("b")
    assert gone.action is DeferralAction.DROPPED and gone.since == 2.0


def test_a_vm_no_longer_sampled_leaves_the_host_and_its_deferral_ends() -> None:
    host = planner(8, committed=8)
    host.claim(Claim("a", 4, 1, 4, 4), 0.0)
    host.claim(Claim("b", 4, 1, 6, 6), 0.0)
    assert host.observe_host(HostView(8, 8, 8), 2.0) == ()
    [gone] = host.observe_host(HostView(8, 4, 8), 10.0)  # b stopped; a is sampled no more either
    assert gone.vm == "b" and gone.action is DeferralAction.DROPPED
    assert host.vms == {} and host.held == 0


def test_a_vm_gone_from_a_host_known_only_by_refusals_is_dropped_at_the_next_division() -> None:
    host = planner(8, committed=8)  # no HostState comes: only observe_host would sweep
    host.claim(Claim("a", 4, 1, 4, 4), 0.0)
    host.claim(Claim("b", 4, 1, 4, 4), 0.0)
    assert host.claim(Claim("b", 4, 1, 6, 6), 1.0).events[0].action is DeferralAction.DEFERRED
    answer = host.claim(Claim("a", 4, 1, 4, 4), 10.0)  # b has not been sampled since
    assert [(e.vm, e.action) for e in answer.events] == [("b", DeferralAction.DROPPED)]
    assert "b" not in host.vms


def test_grows_granted_in_one_interval_never_pass_the_capacity() -> None:
    """Each granted grow holds its room until the VM's next sample, so two VMs cannot take the same room."""
    host = planner(10, committed=8)
    host.claim(Claim("a", 4, 1, 4, 4), 0.0)
    host.claim(Claim("b", 4, 1, 4, 4), 0.0)
    first = host.claim(Claim("a", 4, 1, 6, 6), 1.0)
    second = host.claim(Claim("b", 4, 1, 6, 6), 1.0)
    given = [6 if first.limit is None else first.limit.vcpus, 6 if second.limit is None else second.limit.vcpus]
    assert sum(given) <= 10 and max(given) == 6


def test_the_division_is_made_at_most_once_per_interval_and_caps_hold_still_for_noise() -> None:
    host = planner(12, committed=12)
    for t in (0.0, 1.0):
        for vm in ("a", "b", "c"):
            host.claim(Claim(vm, 4, 1, 8, 8), t)
    assert host.divided_at == 1.0
    caps = dict(host.caps)
    host.claim(Claim("a", 4, 1, 4, 4), 1.5)  # within the interval: the same division
    assert host.divided_at == 1.0 and host.caps == caps
    for t, need in ((2.0, 8), (3.0, 9), (4.0, 8), (5.0, 9)):  # a's need flickers by one vCPU
        host.claim(Claim("a", 4, 1, need, need), t)
        assert host.divided_at == t
        assert host.caps == caps
    assert caps == {"a": 4, "b": 4, "c": 4}


def test_a_host_full_result_redivides_at_once() -> None:
    host = planner(12, committed=8)
    host.claim(Claim("a", 4, 1, 6, 6), 0.0)
    assert host.claim(Claim("b", 4, 1, 6, 6), 0.0).limit is None
    host.learn_full(capacity=10, committed=10, time=0.0)  # an actuator saw 2 more committed than this plan knew
    limited = host.claim(Claim("b", 4, 1, 6, 6), 0.1)
    assert limited.limit is not None and limited.limit.vcpus == 4


def test_a_vm_that_came_after_the_division_waits_for_the_next() -> None:
    host = planner(8, committed=8)
    host.claim(Claim("a", 4, 1, 8, 8), 0.0)
    late = host.claim(Claim("b", 4, 1, 8, 8), 0.5)
    assert late.limit is not None and late.limit.vcpus == 4 and late.events == ()
    assert host.claim(Claim("b", 4, 1, 8, 8), 1.0).events != ()  # counted now: its grow is deferred


def test_a_shrink_the_host_state_shows_before_the_vms_sample_does_is_counted_once() -> None:
    """A VM no one plans holds 2 of 14. The HostState of t=10 already counts a's shrink from 8 to 4; a's sample
    of t=10 may come after it. Once that sample is in, the room is 4 whatever the order: not 6 (the shrink
    counted twice), not 2."""
    for state_first in (True, False):
        host = planner(14, committed=14)
        host.claim(Claim("a", 8, 1, 8, 8, time=9.0), 9.0)
        host.claim(Claim("b", 4, 1, 4, 4, time=9.0), 9.0)
        if state_first:
            host.observe_host(HostView(14, 10, 14, time=10.0), 10.0)
        host.claim(Claim("a", 4, 1, 4, 4, time=10.0), 10.0)
        host.claim(Claim("b", 4, 1, 4, 4, time=10.0), 10.0)
        if not state_first:
            host.observe_host(HostView(14, 10, 14, time=10.0), 10.0)
        assert (host.other, host.capacity - host.held) == (2, 4), state_first


def test_the_view_of_a_host_state() -> None:
    state = HostState(
        time=0, host="h", cpus=8, capacity_vcpus=16, committed_vcpus=12, free_vcpus=4, watermark=0.9, waiting_vms=0
    )
    assert HostView.of(state) == HostView(16, 12, 14, None, 0.0)
    queued = HostState(
        time=0,
        host="h",
        cpus=8,
        capacity_vcpus=16,
        committed_vcpus=12,
        free_vcpus=4,
        waiting_vms=2,
        waiting_vcpus=6,
        next_waiting_vcpus=4,
    )
    assert HostView.of(queued).head == 4


vm_claims = st.lists(
    st.tuples(
        st.integers(1, 8),  # online
        st.integers(1, 3),  # minimum
        st.integers(0, 12),  # need above the minimum
        st.integers(0, 6),  # want above the need
        st.integers(-2, 2),  # priority
        st.sampled_from([0.5, 1.0, 2.0]),  # weight
        st.booleans(),  # preemptible
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(
    vms=vm_claims,
    spare=st.integers(0, 8),
    watermark=st.sampled_from([1.0, 0.8]),
    head=st.one_of(st.none(), st.integers(1, 8)),
)
def test_planned_sizes_fit_the_capacity_and_only_preemptible_vms_lose_what_they_use(
    vms: list[tuple[int, int, int, int, int, float, bool]], spare: int, watermark: float, head: int | None
) -> None:
    claims = []
    for i, (online, low, over_min, over_need, priority, weight, preemptible) in enumerate(vms):
        low = min(low, online)
        need = low + over_min
        claims.append(Claim(f"vm{i}", online, low, need, need + over_need, None, priority, weight, preemptible))
    capacity = sum(c.online for c in claims) + spare  # the current sizes fit
    host = planner(capacity, committed=capacity - spare, insurance=int(capacity * watermark), head=head)
    sizes = {c.vm: c.online for c in claims}
    for t in (0.0, 1.0, 2.0):  # every VM claims, each interval, and is resized as far as it may be at once
        for c in claims:
            answer = host.claim(msgspec.structs.replace(c, online=sizes[c.vm]), t)
            allowed = c.want if answer.limit is None else answer.limit.vcpus
            if answer.limit is not None and not c.preemptible:
                assert allowed >= min(sizes[c.vm], c.need)
            cap = host.caps.get(c.vm)
            if cap is not None and not c.preemptible:
                assert cap >= min(sizes[c.vm], c.need)
            sizes[c.vm] = allowed  # the actuator obeys at once (the planner keeps a grant's room meanwhile)
            assert sum(sizes.values()) <= capacity
        if host.contended:
            assert sum(host.caps.values()) <= capacity


def test_a_preempted_vm_regrows_only_after_the_claim_that_took_its_cores_is_gone_for_the_hold() -> None:
    host = planner(8, committed=8)
    batch = Claim("batch", 6, 1, 6, 6, priority=-10, preemptible=True)
    host.claim(batch, 0.0)
    cut = host.claim(Claim("serve", 2, 1, 4, 4, priority=10), 0.0)
    assert cut.limit is not None  # deferred until the batch job's cores are free
    preempt = host.claim(batch, 1.0).limit
    assert preempt is not None and preempt.vcpus == 4 and preempt.preempt
    host.claim(Claim("serve", 2, 1, 4, 4, priority=10), 2.0)
    host.claim(msgspec.structs.replace(batch, online=4), 2.0)
    host.claim(Claim("serve", 4, 1, 4, 4, priority=10), 3.0)
    # The serving VM's claim is gone (its demand fell, it shrank): the host has room again...
    host.claim(Claim("serve", 2, 1, 2, 2, priority=10), 10.0)
    assert not host.contended
    # ... but the batch job is not grown back into it at once, only when the claim has been gone for the hold.
    held = host.claim(msgspec.structs.replace(batch, online=4), 11.0).limit
    assert held is not None and held.vcpus == 4 and "at most 4 vCPUs" in held.reason
    assert host.claim(msgspec.structs.replace(batch, online=4), 2.0 + CUT_HOLD_S - 1).limit is not None
    assert host.claim(msgspec.structs.replace(batch, online=4), 3.0 + CUT_HOLD_S).limit is None


def test_a_vm_reclaimed_of_its_insurance_still_grows_to_what_it_needs_during_the_hold() -> None:
    host = planner(8, committed=8)
    host.claim(Claim("a", 6, 1, 2, 6), 0.0)
    host.claim(Claim("b", 2, 1, 6, 6), 0.0)
    reclaim = host.claim(Claim("a", 6, 1, 2, 6), 1.0).limit
    assert reclaim is not None and reclaim.vcpus == 2 and not reclaim.preempt
    host.claim(Claim("a", 2, 1, 2, 6), 2.0)
    host.claim(Claim("b", 2, 1, 2, 2), 2.0)  # b's need is gone; a's present need rises
    need = host.claim(Claim("a", 2, 1, 5, 6), 3.0).limit
    assert need is not None and need.vcpus == 5  # its need at once, its insurance only after the hold
    assert host.claim(Claim("a", 5, 1, 5, 6), 1.0 + CUT_HOLD_S + 1).limit is None


def test_the_division_does_not_cut_a_vm_for_its_own_grant_that_a_host_view_counts_before_its_sample() -> None:
    host = planner(8, committed=6)
    assert host.claim(Claim("a", 2, 1, 4, 4, preemptible=True), 0.0).limit is None  # granted 2 more
    assert host.claim(Claim("b", 4, 1, 4, 4), 0.0).limit is None
    # The collector's view counts a's plugged vCPUs; a's sample of that moment comes after b's, which wants more.
    host.observe_host(HostView(8, 8, 8, None, 1.0), 1.0)
    host.claim(Claim("b", 4, 1, 5, 5, time=1.0), 1.0)
    assert host.contended
    assert host.claim(Claim("a", 4, 1, 4, 4, preemptible=True, time=1.0), 1.0).limit is None


def test_a_vm_that_wants_less_than_its_share_is_still_cut_to_it_when_its_cores_were_divided_away() -> None:
    """Its policy would shrink it anyway, but a rail of its own could keep the cores another claim was promised:
    the planner says it is a cut, and to what the policy wants (one order, not two)."""
    host = planner(16, committed=16)
    host.claim(Claim("idle", 8, 1, 2, 8), 0.0)
    host.claim(Claim("busy", 8, 1, 12, 12), 0.0)  # deferred: the host is divided
    cut = host.claim(Claim("idle", 8, 1, 2, 3), 1.0).limit  # its policy now wants 3, its share is 4
    assert cut is not None and cut.vcpus == 3
    assert "held against a burst go to present need" in cut.reason


def test_claim_of_a_warming_vm_needs_what_it_has() -> None:
    """In its warm-up the rails keep a VM's vCPUs whatever its policy wants, and the demand seen so far
    underestimates it: its claim needs what it has, so the host counts on no cut of it (a preemptible one may
    still lose them to a higher priority: its floor is its minimum)."""
    from services.decider.engine import Proposal
    from services.decider.policies.base import Observation, Recommendation
    from services.decider.pool import claim_of
    from shared.config.rules import VmSettings

    obs = Observation(time=5.0, vcpus=8, min_vcpus=1, max_vcpus=8, used_cores=1.0, interval_s=1.0)
    rec = Recommendation(3, "cheapest size", "shrink", 2)
    settings = VmSettings("t", None, "auto", "default", {}, None, None)
    warming = claim_of("new", Proposal(obs, rec, warming=True), settings, None)
    settled = claim_of("new", Proposal(obs, rec, warming=False), settings, None)
    assert (warming.need, warming.want) == (8, 8)
    assert (settled.need, settled.want) == (2, 3)
    host = planner(12, committed=12)
    host.claim(warming, 5.0)
    busy = host.claim(Claim("busy", 4, 1, 6, 6), 5.0)
    assert busy.limit is not None and busy.limit.vcpus == 4  # deferred: no room is promised from the new VM
    assert host.claim(warming, 6.0).limit is None


def test_the_engine_says_when_a_vm_is_warming() -> None:
    from services.decider.engine import VmEngine
    from services.decider.policies.base import Observation
    from services.decider.registry import build_policy

    engine = VmEngine(*build_policy("default", {"guard": {"warmup_s": "60"}}))

    def proposal(t: float) -> bool:
        p = engine.propose(Observation(time=t, vcpus=4, min_vcpus=1, max_vcpus=8, used_cores=1.0, interval_s=1.0))
        assert p is not None
        return p.warming

    assert proposal(100.0) and proposal(159.0)
    assert not proposal(160.0)
