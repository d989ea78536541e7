"""A simulated guest's PSI trigger: stall counted within the trailing window only, fired at the moment it reached the
threshold (not at the end of the step that crossed it), at most once a window; and the host checks it as it
integrates, and says when it must next be integrated for a trigger to fire on time."""

from __future__ import annotations

import pytest

from services.simulator.cloud import SimVm
from services.simulator.host import Host
from services.simulator.stall import StallTrigger
from services.simulator.workloads import Workload


def steps(trigger: StallTrigger, start: float, end: float, stalled: bool, step: float = 0.25) -> list[float]:
    """Account ``start``..``end`` in integration steps, as the host does: the moments it fired."""
    fired = []
    t = start
    while t < end - 1e-12:
        nxt = min(end, t + step)
        at = trigger.account(t, nxt, stalled)
        if at is not None:
            fired.append(at)
        t = nxt
    return fired


def test_it_fires_the_moment_the_stall_within_the_window_reaches_the_threshold() -> None:
    trigger = StallTrigger(0.1, 1.0)
    assert steps(trigger, 0.0, 5.0, stalled=False) == []
    fired = trigger.account(5.0, 5.25, True)
    assert fired == pytest.approx(5.1)


def test_stall_older_than_the_window_does_not_count() -> None:
    trigger = StallTrigger(0.3, 1.0)
    assert trigger.account(0.0, 0.2, True) is None  # 0.2 s, short of 0.3
    assert steps(trigger, 0.2, 1.5, stalled=False) == []
    # the first 0.2 s have left the window: a new 0.2 s is not enough, 0.3 s is
    assert trigger.account(1.5, 1.7, True) is None
    assert trigger.stall_within(1.7) == pytest.approx(0.2)
    assert trigger.account(1.7, 1.8, True) == pytest.approx(1.8)


def test_stall_spread_over_steps_within_the_window_adds_up() -> None:
    trigger = StallTrigger(0.3, 1.0)
    assert trigger.account(0.0, 0.2, True) is None
    assert trigger.account(0.2, 0.5, False) is None
    # 0.2 s earlier in the window and 0.1 s now
    assert trigger.account(0.5, 0.75, True) == pytest.approx(0.6)


def test_a_lasting_stall_fires_once_a_window() -> None:
    trigger = StallTrigger(0.1, 1.0)
    fired = steps(trigger, 0.0, 4.0, stalled=True)
    assert fired == pytest.approx([0.1, 1.1, 2.1, 3.1])


def test_a_stall_within_a_window_of_the_last_firing_waits_for_it() -> None:
    trigger = StallTrigger(0.1, 1.0)
    assert trigger.account(0.0, 0.25, True) == pytest.approx(0.1)
    assert trigger.account(0.25, 0.5, False) is None
    assert trigger.account(0.5, 0.75, True) is None  # 0.45 s stalled within the window, fired 0.65 s ago
    assert trigger.account(0.75, 1.25, True) == pytest.approx(1.1)


def test_due_is_when_a_stall_from_now_on_would_fire() -> None:
    trigger = StallTrigger(0.1, 1.0)
    assert trigger.due(3.0) == pytest.approx(3.1)
    trigger.account(3.0, 3.05, True)
    assert trigger.due(3.05) == pytest.approx(3.1)
    trigger.account(3.05, 3.25, True)  # fired at 3.1
    assert trigger.due(3.25) >= 4.1


def test_a_trigger_needs_a_stall_within_its_window() -> None:
    with pytest.raises(ValueError, match="at most its window"):
        StallTrigger(2.0, 1.0)
    with pytest.raises(ValueError, match="more than 0"):
        StallTrigger(0.0, 1.0)


def vm(online: int, demand: float | None) -> SimVm:
    machine = SimVm(name="a", max_vcpus=8, online_vcpus=online, workload=Workload("batch", 8, 1, 0.0))
    machine.demand_override = demand
    return machine


def test_the_host_fires_a_vms_trigger_when_its_demand_exceeds_its_vcpus_as_it_integrates() -> None:
    busy, calm = vm(2, 3.0), vm(2, 1.0)
    calm.name = "b"
    host = Host(16, 16, resident=[busy, calm], psi_trigger=(0.1, 1.0))
    host.advance(2.5)
    fired = host.take_fired()
    assert [vm for vm, _ in fired] == ["a", "a", "a"]
    assert [at for _, at in fired] == pytest.approx([0.1, 1.1, 2.1])
    assert host.take_fired() == []


def test_a_host_without_a_trigger_fires_none_and_asks_no_check() -> None:
    host = Host(16, 16, resident=[vm(2, 3.0)])
    host.advance(2.0)
    assert host.take_fired() == []
    assert host.next_stall_check() is None


def test_the_next_check_is_a_stalled_vms_trigger_or_the_next_step_of_demand() -> None:
    stalled = Host(16, 16, resident=[vm(2, 3.0)], psi_trigger=(0.1, 1.0))
    assert stalled.next_stall_check() == pytest.approx(0.1)
    pinned_fits = Host(16, 16, resident=[vm(2, 1.0)], psi_trigger=(0.1, 1.0))
    assert pinned_fits.next_stall_check() is None
    following = vm(8, None)
    workload = following.workload
    assert isinstance(workload, Workload)
    host = Host(16, 16, resident=[following], psi_trigger=(0.1, 1.0))
    assert host.next_stall_check() == pytest.approx(workload.phase(0.0).end)
