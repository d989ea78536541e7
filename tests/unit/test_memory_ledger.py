"""A host's memory in the decider (services.decider.memory.ledger.MemoryLedger): a grow that fits goes out, one
that does not is cut to the room on the device's block or deferred, shrinks free room once samples show them, a
grow under way is counted once, and a VM short of memory is served before one growing on its margin. Pure."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.decider.memory.ledger import MIN_CUT_BYTES, MemoryClaim, MemoryLedger, MemoryView
from shared.messages import DeferralAction, HostState, Resource
from shared.units import GIB, MIB


def ledger(capacity: int, committed: int, time: float = 0.0) -> MemoryLedger:
    return MemoryLedger(MemoryView(capacity, committed, time))


def test_a_grow_that_fits_goes_out_as_the_rule_asked() -> None:
    host = ledger(16 * GIB, 8 * GIB)
    assert host.claim(MemoryClaim("b", 4 * GIB), 0.0) == (None, "", ())
    assert host.claim(MemoryClaim("a", 4 * GIB, target=6 * GIB, kind="margin"), 0.0) == (6 * GIB, "", ())
    assert host.room() == 6 * GIB  # the grant is taken at once
    assert host.deferred() == 0


def test_a_grow_past_the_room_is_cut_to_it_on_the_devices_block() -> None:
    host = ledger(10 * GIB + 3 * MIB, 8 * GIB)
    host.claim(MemoryClaim("b", 4 * GIB), 0.0)
    answer = host.claim(MemoryClaim("a", 4 * GIB, target=8 * GIB, kind="margin"), 1.0)
    assert answer.target == 6 * GIB + 2 * MIB  # 2 GiB 3 MiB free, aligned down to 2 MiB
    assert answer.reason == "host memory full: capacity 10GiB, 8GiB committed; 2GiB of 4GiB wanted deferred"
    [started] = answer.events
    assert started.resource is Resource.MEMORY
    assert (started.action, started.vcpus, started.wanted, started.granted, started.since) == (
        DeferralAction.DEFERRED,
        4 * GIB,
        8 * GIB,
        6 * GIB + 2 * MIB,
        1.0,
    )
    assert host.deferred() == 1 and host.oldest_deferral(4.0) == 3.0


def test_a_grow_with_less_room_than_is_worth_a_cut_is_deferred_not_sent() -> None:
    host = ledger(8 * GIB + MIN_CUT_BYTES - 2 * MIB, 8 * GIB)
    host.claim(MemoryClaim("b", 4 * GIB), 0.0)
    answer = host.claim(MemoryClaim("a", 4 * GIB, target=5 * GIB, kind="margin"), 0.0)
    assert answer.target is None and answer.reason.startswith("host memory full")
    [started] = answer.events
    assert (started.action, started.granted) == (DeferralAction.DEFERRED, 4 * GIB)
    # Asked again at the next sample: still deferred, no new event; nothing was taken meanwhile.
    again = host.claim(MemoryClaim("a", 4 * GIB, target=5 * GIB, kind="margin"), 1.0)
    assert again.target is None and again.events == ()
    assert host.room() == MIN_CUT_BYTES - 2 * MIB


def test_a_shrink_always_goes_out_and_its_memory_counts_once_a_sample_shows_it() -> None:
    host = ledger(8 * GIB, 8 * GIB)
    assert host.claim(MemoryClaim("a", 4 * GIB, target=6 * GIB, kind="margin"), 0.0).target is None
    assert host.claim(MemoryClaim("b", 4 * GIB, target=2 * GIB, kind="shrink"), 0.0).target == 2 * GIB
    # The shrink is in flight, not seen: the grow still waits.
    assert host.claim(MemoryClaim("b", 4 * GIB, pending=2 * GIB), 1.0).target is None
    assert host.claim(MemoryClaim("a", 4 * GIB, target=6 * GIB, kind="margin"), 1.0).target is None
    host.claim(MemoryClaim("b", 2 * GIB), 2.0)  # the shrink shows
    granted = host.claim(MemoryClaim("a", 4 * GIB, target=6 * GIB, kind="margin"), 2.0)
    assert granted.target == 6 * GIB
    [ended] = granted.events
    assert (ended.action, ended.wanted, ended.granted, ended.since) == (DeferralAction.GRANTED, 6 * GIB, 6 * GIB, 0.0)
    assert host.deferred() == 0


def test_a_grow_under_way_is_counted_once_whether_the_view_or_the_sample_shows_it_first() -> None:
    host = ledger(16 * GIB, 8 * GIB, time=0.0)
    host.claim(MemoryClaim("b", 4 * GIB, time=0.0), 0.0)
    assert host.claim(MemoryClaim("a", 4 * GIB, target=6 * GIB, time=0.0), 0.0).target == 6 * GIB
    assert host.room() == 6 * GIB
    # In flight: its sample still shows 4 GiB, the order holds 6.
    host.claim(MemoryClaim("a", 4 * GIB, pending=6 * GIB, time=1.0), 1.0)
    assert host.room() == 6 * GIB
    # The collector saw it land before the VM's sample did: its 6 GiB are in the view's committed.
    host.observe_host(MemoryView(16 * GIB, 10 * GIB, time=2.0), 2.0)
    assert host.room() == 6 * GIB
    host.claim(MemoryClaim("a", 6 * GIB, time=2.0), 2.0)  # the sample shows it, the order no longer in flight
    host.claim(MemoryClaim("b", 4 * GIB, time=2.0), 2.0)
    assert host.room() == 6 * GIB
    # Another VM's memory, not claimed here, counts as committed: 2 GiB more in the view.
    host.observe_host(MemoryView(16 * GIB, 12 * GIB, time=3.0), 3.0)
    assert host.room() == 4 * GIB


def test_a_vm_short_of_memory_is_served_before_one_growing_on_its_margin() -> None:
    host = ledger(12 * GIB, 12 * GIB)
    host.claim(MemoryClaim("idle", 4 * GIB), 0.0)
    # Both wait; the margin VM has the higher [[vm]] priority, and asked first.
    assert host.claim(MemoryClaim("calm", 4 * GIB, target=6 * GIB, kind="margin", priority=5), 0.0).target is None
    assert host.claim(MemoryClaim("short", 4 * GIB, target=6 * GIB, kind="swapping"), 0.0).target is None
    host.claim(MemoryClaim("idle", 4 * GIB, target=2 * GIB, kind="shrink"), 1.0)
    host.claim(MemoryClaim("idle", 2 * GIB), 2.0)  # 2 GiB free now
    kept = host.claim(MemoryClaim("calm", 4 * GIB, target=6 * GIB, kind="margin", priority=5), 2.0)
    assert kept.target is None and kept.reason.endswith("(2GiB kept for grows served first)")
    served = host.claim(MemoryClaim("short", 4 * GIB, target=6 * GIB, kind="swapping"), 2.0)
    assert served.target == 6 * GIB and served.events[0].action is DeferralAction.GRANTED
    assert host.deferred() == 1


def test_within_one_rank_a_blocked_grow_does_not_block_a_smaller_one() -> None:
    host = ledger(9 * GIB, 8 * GIB)
    host.claim(MemoryClaim("b", 4 * GIB), 0.0)
    cut = host.claim(MemoryClaim("a", 4 * GIB, target=8 * GIB, kind="margin"), 0.0)
    assert cut.target == 5 * GIB  # the room, all of it
    host.observe_host(MemoryView(10 * GIB, 8 * GIB, time=1.0), 1.0)  # a capacity raised: 1 GiB more
    assert host.claim(MemoryClaim("b", 4 * GIB, target=4 * GIB + 512 * MIB, kind="margin"), 1.0).target == (
        4 * GIB + 512 * MIB
    )


def test_a_deferral_is_kept_while_the_vm_waits_and_dropped_when_it_no_longer_wants_it_or_is_gone() -> None:
    host = ledger(8 * GIB, 8 * GIB)
    host.claim(MemoryClaim("a", 4 * GIB, target=6 * GIB), 0.0)
    host.claim(MemoryClaim("b", 4 * GIB, target=6 * GIB), 0.0)
    assert host.claim(MemoryClaim("a", 4 * GIB, waiting=True), 1.0).events == ()  # held: still waits
    [dropped] = host.claim(MemoryClaim("a", 4 * GIB), 2.0).events
    assert (dropped.action, dropped.reason) == (DeferralAction.DROPPED, "no longer wanted")
    # b is not sampled again: gone, once a view comes five intervals later.
    [gone] = host.observe_host(MemoryView(8 * GIB, 8 * GIB, time=6.5), 6.5)
    assert (gone.vm, gone.action, gone.reason) == ("b", DeferralAction.DROPPED, "gone")
    assert host.deferred() == 0 and set(host.vms) == {"a"}


def test_a_host_state_without_memory_plans_no_memory() -> None:
    state = HostState(time=1.0, host="h", cpus=4, capacity_vcpus=4, committed_vcpus=2, free_vcpus=2)
    assert MemoryView.of(state) is None
    with_memory = HostState(
        time=1.0, host="h", cpus=4, capacity_vcpus=4, committed_vcpus=2, free_vcpus=2, memory_bytes=16 * GIB,
        capacity_memory_bytes=14 * GIB, committed_memory_bytes=6 * GIB,
    )  # fmt: skip
    assert MemoryView.of(with_memory) == MemoryView(14 * GIB, 6 * GIB, 1.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(-3, 8), st.sampled_from(["margin", "pressure", "swapping"])),
        max_size=60,
    )
)
def test_the_orders_it_lets_out_never_take_the_host_past_its_memory(steps: list[tuple[int, int, str]]) -> None:
    """Four VMs and 2 GiB of others' memory on a 16 GiB host; each step one VM's sample asks for a change (0: a
    HostState instead). Its order lands by its next sample, or before a HostState sees it."""
    capacity, others = 16 * GIB, 2 * GIB
    sizes = {f"v{i}": 2 * GIB for i in range(4)}
    landing: dict[str, int] = {}
    host = ledger(capacity, others + sum(sizes.values()))
    for t, (i, delta, kind) in enumerate(steps, start=1):
        if delta == 0:
            sizes.update(landing)  # landed before the VMs' samples show them
            landing.clear()
            host.observe_host(MemoryView(capacity, others + sum(sizes.values()), float(t)), float(t))
            continue
        vm = f"v{i}"
        sizes[vm] = landing.pop(vm, sizes[vm])
        target = max(512 * MIB, sizes[vm] + delta * 512 * MIB)
        answer = host.claim(MemoryClaim(vm, sizes[vm], target=target, kind=kind, time=float(t)), float(t))
        if answer.target is not None:
            assert answer.target <= target and (answer.target <= sizes[vm] or answer.target % (2 * MIB) == 0)
            landing[vm] = answer.target
        committed = others + sum(max(size, landing.get(name, 0)) for name, size in sizes.items())
        assert committed <= capacity
