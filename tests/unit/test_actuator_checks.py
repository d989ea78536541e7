"""The actuator's safety rules, whatever the decider says."""

from __future__ import annotations

from services.actuator.checks import Bounds, Plan, Refusal, admit, plan, rate_limited
from services.actuator.drivers.base import VmView
from shared.messages import ErrorCode, ScaleCommand


def command(target: int, seen: int = 2, host: str = "h", expires: float = 100.0) -> ScaleCommand:
    return ScaleCommand(
        id="c1",
        time=0.0,
        host=host,
        vm="v",
        target_vcpus=target,
        seen_vcpus=seen,
        decider="d",
        reason="r",
        expires_at=expires,
    )


VIEW = VmView(vm="v", online_vcpus=2, min_vcpus=1, max_vcpus=4)


def test_admit_refuses_other_hosts_and_expired_commands() -> None:
    assert admit(command(3), "h", now=50) is None
    refusal = admit(command(3, host="other"), "h", now=50)
    assert refusal is not None and refusal.code is ErrorCode.WRONG_HOST
    refusal = admit(command(3), "h", now=100)
    assert refusal is not None and refusal.code is ErrorCode.EXPIRED


def test_plan_steps_and_direction() -> None:
    assert plan(command(4), VIEW, Bounds()) == Plan(direction=1, steps=2)
    assert plan(command(1), VIEW, Bounds()) == Plan(direction=-1, steps=1)
    assert plan(command(2), VIEW, Bounds()) == Plan(direction=0, steps=0)


def test_plan_refuses_out_of_bounds_from_hypervisor_or_own_config() -> None:
    for target, bounds in ((5, Bounds()), (3, Bounds(max_vcpus=2)), (1, Bounds(min_vcpus=2))):
        refused = plan(command(target), VIEW, bounds)
        assert isinstance(refused, Refusal) and refused.code is ErrorCode.OUT_OF_BOUNDS


def test_plan_refuses_a_command_decided_on_a_stale_view() -> None:
    refused = plan(command(3, seen=1), VIEW, Bounds())
    assert isinstance(refused, Refusal) and refused.code is ErrorCode.STALE_VIEW


def test_commands_from_an_older_leadership_term_are_refused() -> None:
    old = ScaleCommand(
        id="c",
        time=0.0,
        host="h",
        vm="v",
        target_vcpus=3,
        seen_vcpus=2,
        decider="d",
        reason="r",
        expires_at=100.0,
        term=1,
    )
    assert admit(old, "h", now=1, current_term=1) is None
    refusal = admit(old, "h", now=1, current_term=2)
    assert refusal is not None and refusal.code is ErrorCode.STALE_TERM


def test_rate_limit_counts_only_the_window() -> None:
    assert rate_limited([], now=100, limit=2, window_s=60) is None
    assert rate_limited([10.0, 30.0], now=100, limit=2, window_s=60) is None  # both outside the window
    refusal = rate_limited([50.0, 90.0], now=100, limit=2, window_s=60)
    assert refusal is not None and refusal.code is ErrorCode.RATE_LIMITED


def test_a_vm_already_at_the_target_needs_nothing_whatever_was_seen() -> None:
    assert plan(command(2, seen=3), VIEW, Bounds()) == Plan(direction=0, steps=0)


def test_a_vm_outside_narrowed_bounds_may_step_towards_them_and_no_further_out() -> None:
    """Bounds lowered under a running VM (a reloaded config file) must not strand it: a shrink towards the new
    maximum is taken, one that stays as far out or goes further is refused."""
    above = VmView(vm="v", online_vcpus=8, min_vcpus=1, max_vcpus=16)
    narrowed = Bounds(min_vcpus=2, max_vcpus=6)
    assert plan(command(7, seen=8), above, narrowed) == Plan(direction=-1, steps=1)
    assert plan(command(6, seen=8), above, narrowed) == Plan(direction=-1, steps=2)
    for target in (9, 8):
        refusal = plan(command(target, seen=8), above, narrowed)
        assert isinstance(refusal, Refusal) and refusal.code is ErrorCode.OUT_OF_BOUNDS, target
    below = VmView(vm="v", online_vcpus=2, min_vcpus=1, max_vcpus=16)
    raised = Bounds(min_vcpus=4, max_vcpus=8)
    assert plan(command(3, seen=2), below, raised) == Plan(direction=1, steps=1)
    refusal = plan(command(1, seen=2), below, raised)
    assert isinstance(refusal, Refusal) and refusal.code is ErrorCode.OUT_OF_BOUNDS
