"""The actuator's memory path, pure: the checks of a memory command, its way through the ledger (a lane of its own
per VM, with its own rate limit), the result in bytes, and ``move_memory``'s poll on a fake driver."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.actuator import steps
from services.actuator.checks import Bounds, Refusal
from services.actuator.drivers.base import DriverError, MemoryView, VmView
from services.actuator.ledger import (
    MEMORY_LANE,
    Acknowledge,
    Acknowledged,
    Done,
    Execute,
    Executed,
    Failed,
    Ledger,
    LedgerRules,
    Mark,
    Marked,
    MemoryRead,
    PauseRead,
    ReadPause,
    ReadVm,
    Recounted,
    Reread,
    StartWorker,
    Store,
    Stored,
    Unmark,
    Unmarked,
    VmRead,
    Wait,
    lane,
    lane_label,
)
from services.actuator.memory_checks import MemoryPlan, allowed_memory, plan_memory, shrink_floor
from services.actuator.vmbounds import bounds_for
from shared.config.schema import VmRule
from shared.messages import ErrorCode, Resource, ScaleCommand, ScaleResult
from shared.units import GIB, MIB

STEP = 2 * MIB


def memory_command(command_id: str, target: int, seen: int = 4 * GIB, vm: str = "a", at: float = 0.0) -> ScaleCommand:
    return ScaleCommand(
        id=command_id,
        time=at,
        host="h",
        vm=vm,
        resource=Resource.MEMORY,
        target_memory_bytes=target,
        seen_memory_bytes=seen,
        decider="d",
        reason="r",
        expires_at=at + 1e9,
    )


def vcpu_command(command_id: str, target: int = 3, seen: int = 2, vm: str = "a") -> ScaleCommand:
    return ScaleCommand(
        id=command_id,
        time=0.0,
        host="h",
        vm=vm,
        target_vcpus=target,
        seen_vcpus=seen,
        decider="d",
        reason="r",
        expires_at=1e9,
    )


def memory_view(size: int = 4 * GIB, used: int | None = GIB, total: int | None = None) -> MemoryView:
    return MemoryView(
        vm="a",
        size_bytes=size,
        requested_bytes=size,
        min_bytes=GIB,
        max_bytes=16 * GIB,
        step_bytes=STEP,
        method="virtio-mem",
        guest_total_bytes=None if used is None else (total or size),
        guest_available_bytes=None if used is None else (total or size) - used,
    )


# -- the checks ----------------------------------------------------------------------------------------------------


def test_a_grow_is_planned_on_the_step_grid() -> None:
    assert plan_memory(memory_command("c", 6 * GIB + 1), memory_view(), Bounds()) == MemoryPlan(6 * GIB + STEP, 1)


def test_a_target_past_the_limits_is_out_of_bounds() -> None:
    refused = plan_memory(memory_command("c", 32 * GIB), memory_view(), Bounds())
    assert isinstance(refused, Refusal) and refused.code is ErrorCode.OUT_OF_BOUNDS
    assert "outside [1GiB, 16GiB]" in refused.message
    mine = plan_memory(memory_command("c", 10 * GIB), memory_view(), Bounds(max_memory_bytes=8 * GIB))
    assert isinstance(mine, Refusal) and mine.code is ErrorCode.OUT_OF_BOUNDS


def test_a_vm_left_outside_narrowed_bounds_may_be_brought_closer() -> None:
    decided = plan_memory(
        memory_command("c", 10 * GIB, seen=12 * GIB), memory_view(12 * GIB), Bounds(max_memory_bytes=8 * GIB)
    )
    assert decided == MemoryPlan(10 * GIB, -1)


def test_a_size_the_decider_did_not_see_is_a_stale_view() -> None:
    refused = plan_memory(memory_command("c", 6 * GIB, seen=2 * GIB), memory_view(4 * GIB), Bounds())
    assert isinstance(refused, Refusal) and refused.code is ErrorCode.STALE_VIEW


def test_a_vm_at_its_target_needs_nothing() -> None:
    assert plan_memory(memory_command("c", 4 * GIB, seen=0), memory_view(), Bounds()) == MemoryPlan(4 * GIB, 0)


def test_a_shrink_below_what_the_guest_uses_is_refused() -> None:
    used = 3 * GIB
    refused = plan_memory(memory_command("c", 3 * GIB), memory_view(used=used), Bounds())
    assert isinstance(refused, Refusal) and refused.code is ErrorCode.BELOW_USED
    assert "uses (3GiB)" in refused.message
    assert plan_memory(memory_command("c", 3 * GIB + 256 * MIB), memory_view(used=used), Bounds()) == MemoryPlan(
        3 * GIB + 256 * MIB, -1
    )


def test_a_shrink_of_a_guest_whose_use_is_unknown_is_refused_and_a_grow_is_not() -> None:
    refused = plan_memory(memory_command("c", 2 * GIB), memory_view(used=None), Bounds())
    assert isinstance(refused, Refusal) and refused.code is ErrorCode.BELOW_USED and "blind" in refused.message
    assert plan_memory(memory_command("c", 6 * GIB), memory_view(used=None), Bounds()) == MemoryPlan(6 * GIB, 1)


@given(
    target=st.integers(min_value=1, max_value=20 * GIB),
    size=st.integers(min_value=1, max_value=16 * 512).map(lambda n: n * STEP),
    used=st.integers(min_value=0, max_value=16 * GIB),
)
def test_no_plan_leaves_the_guest_under_its_floor_or_off_the_grid(target: int, size: int, used: int) -> None:
    view = memory_view(size=size, used=min(used, size), total=size)
    decided = plan_memory(memory_command("c", target, seen=size), view, Bounds())
    if isinstance(decided, MemoryPlan) and decided.direction < 0:
        assert decided.target >= shrink_floor(min(used, size))
    if isinstance(decided, MemoryPlan):
        assert decided.target % STEP == 0
        low, high = allowed_memory(view, Bounds())
        # inside the bounds, or closer to them than the VM is (bounds narrowed under it)
        assert decided.direction == 0 or low <= decided.target <= high or size < decided.target < low


# -- the ledger ----------------------------------------------------------------------------------------------------


def rules(max_changes: int = 6) -> LedgerRules:
    return LedgerRules(
        actuator="act", host="h", bounds=lambda vm: Bounds(1, 8), max_changes=max_changes, host_views=False
    )


@dataclass
class Shell:
    """Carries out the ledger's actions on one VM's memory (and vCPUs), moving at once."""

    ledger: Ledger[str]
    memory: int = 4 * GIB
    used: int = GIB
    vcpus: int = 2
    fail_with: ErrorCode | None = None
    reached: int | None = None  # a device that stops here
    log: list[ScaleResult] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    def run(self, key: str) -> None:
        while not isinstance(action := self.ledger.next_action(key, 0.0), Done):
            self.actions.append(type(action).__name__)
            self.ledger.outcome(key, self.carry_out(action), 0.0, 0.0)

    def carry_out(self, action: object):  # type: ignore[no-untyped-def]
        if isinstance(action, ReadPause):
            return PauseRead(None, 0.0)
        if isinstance(action, ReadVm):
            if action.command.resource is Resource.MEMORY:
                return MemoryRead(memory_view(self.memory, self.used))
            return VmRead(VmView(vm="a", online_vcpus=self.vcpus, min_vcpus=1, max_vcpus=8))
        if isinstance(action, Mark):
            return Marked()
        if isinstance(action, Execute):
            if isinstance(action.plan, MemoryPlan):
                if self.fail_with is not None:
                    self.memory = self.reached if self.reached is not None else self.memory
                    return Failed(Refusal(self.fail_with, "stalled"))
                self.memory = action.plan.target
                return Executed(self.memory)
            self.vcpus += action.plan.direction * action.plan.steps
            return Executed(self.vcpus)
        if isinstance(action, Reread):
            return Recounted(self.memory if action.command.resource is Resource.MEMORY else self.vcpus)
        if isinstance(action, Store):
            self.log.append(action.result)
            return Stored(action.result)
        if isinstance(action, Unmark):
            return Unmarked()
        assert isinstance(action, Acknowledge)
        return Acknowledged(action.handles)


def test_a_memory_command_goes_its_own_lane_and_is_answered_in_bytes() -> None:
    shell = Shell(Ledger(rules()))
    start = shell.ledger.receive(memory_command("m1", 6 * GIB), "h1")
    assert start == StartWorker("a" + MEMORY_LANE) and lane_label(start.vm) == "a (memory)"
    # A vCPU order for the same VM neither waits behind the memory order nor supersedes it.
    assert shell.ledger.receive(vcpu_command("c1"), "h2") == StartWorker("a")
    shell.run("a" + MEMORY_LANE)
    shell.run("a")
    memory, vcpus = shell.log
    assert memory.ok and memory.resource is Resource.MEMORY and memory.error_code is None
    assert (memory.memory_before_bytes, memory.memory_after_bytes, memory.target_memory_bytes) == (
        4 * GIB,
        6 * GIB,
        6 * GIB,
    )
    assert (memory.allowed_min_memory_bytes, memory.allowed_max_memory_bytes) == (GIB, 16 * GIB)
    assert memory.vcpus_before is None and memory.target_vcpus is None
    assert vcpus.ok and (vcpus.vcpus_before, vcpus.vcpus_after) == (2, 3) and vcpus.resource is Resource.VCPU
    assert shell.ledger.changes("a" + MEMORY_LANE) == [0.0] and shell.ledger.changes("a") == [0.0]
    assert "a" + MEMORY_LANE not in shell.ledger.host.commitments()  # memory holds no vCPU room


def test_a_newer_memory_order_supersedes_an_older_one_but_not_a_vcpu_order() -> None:
    ledger: Ledger[str] = Ledger(rules())
    ledger.receive(memory_command("m1", 6 * GIB), "h1")
    assert ledger.receive(memory_command("m2", 8 * GIB), "h2") == Wait()
    shell = Shell(ledger)
    shell.run("a" + MEMORY_LANE)
    first, second = shell.log
    assert first.error_code is ErrorCode.SUPERSEDED and second.ok and shell.memory == 8 * GIB


def test_each_lane_has_its_own_rate_limit() -> None:
    shell = Shell(Ledger(rules(max_changes=1)))
    shell.ledger.receive(memory_command("m1", 6 * GIB), "h1")
    shell.run("a" + MEMORY_LANE)
    shell.ledger.receive(memory_command("m2", 8 * GIB, seen=6 * GIB), "h2")
    shell.run("a" + MEMORY_LANE)
    shell.ledger.receive(vcpu_command("c1"), "h3")
    shell.run("a")
    grown, limited, vcpus = shell.log
    assert grown.ok and limited.error_code is ErrorCode.RATE_LIMITED and vcpus.ok


def test_a_shrink_below_use_is_answered_with_what_the_guest_used() -> None:
    shell = Shell(Ledger(rules()), used=3 * GIB)
    shell.ledger.receive(memory_command("m1", 2 * GIB), "h1")
    shell.run("a" + MEMORY_LANE)
    (refused,) = shell.log
    assert refused.error_code is ErrorCode.BELOW_USED and refused.guest_used_bytes == 3 * GIB
    assert refused.retry_after == 10.0 and shell.memory == 4 * GIB
    assert "Execute" not in shell.actions


def test_a_move_that_stalls_part_way_says_how_far_it_got() -> None:
    shell = Shell(Ledger(rules()), fail_with=ErrorCode.PARTIAL, reached=3 * GIB)
    shell.ledger.receive(memory_command("m1", 2 * GIB), "h1")
    shell.run("a" + MEMORY_LANE)
    (partial,) = shell.log
    assert not partial.ok and partial.error_code is ErrorCode.PARTIAL
    assert (partial.memory_before_bytes, partial.memory_after_bytes) == (4 * GIB, 3 * GIB)
    assert partial.retry_after == 30.0


def test_a_memory_command_left_in_progress_is_settled_within_a_step() -> None:
    ledger: Ledger[str] = Ledger(rules())
    done = ledger.settled(memory_command("m1", 6 * GIB + 1), 4 * GIB, 6 * GIB, 9.0, 0.5, step=STEP)
    assert done.ok and done.memory_after_bytes == 6 * GIB
    cut = ledger.settled(memory_command("m2", 6 * GIB), 4 * GIB, 5 * GIB, 9.0, 0.5, step=STEP)
    assert not cut.ok and "of the 6442450944 asked" in (cut.error or "")


def test_lanes_never_collide_with_vm_names() -> None:
    assert lane(memory_command("m", GIB, vm="a")) != lane(vcpu_command("c", vm="a (memory)"))
    assert lane(vcpu_command("c", vm="a")) == "a"


# -- move_memory ---------------------------------------------------------------------------------------------------


@dataclass
class FakeResizer:
    """Moves ``per_read`` bytes toward the request at each read, and no further than ``stop_at``."""

    name: str = "fake"
    size: int = 4 * GIB
    requested: int = 4 * GIB
    per_read: int = GIB
    stop_at: int | None = None
    asked: list[int] = field(default_factory=list)

    async def read(self, vm: str) -> VmView:
        raise NotImplementedError

    async def plug(self, vm: str) -> None:
        raise NotImplementedError

    async def unplug(self, vm: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None

    async def read_memory(self, vm: str) -> MemoryView:
        goal = self.requested if self.stop_at is None else self.stop_at
        delta = max(-self.per_read, min(self.per_read, goal - self.size))
        self.size += delta
        return memory_view(self.size)

    async def resize_memory(self, vm: str, target_bytes: int) -> None:
        self.asked.append(target_bytes)
        self.requested = target_bytes


async def test_move_memory_reads_until_the_size_is_there() -> None:
    driver = FakeResizer()
    after = await steps.move_memory(driver, "a", MemoryPlan(8 * GIB, 1), 4 * GIB, poll_s=0.0)
    assert after == 8 * GIB and driver.asked == [8 * GIB]


@pytest.mark.parametrize(("stop_at", "code"), [(3 * GIB, ErrorCode.PARTIAL), (4 * GIB, ErrorCode.NOT_VERIFIED)])
async def test_move_memory_that_stalls_is_partial_or_not_verified(stop_at: int, code: ErrorCode) -> None:
    driver = FakeResizer(stop_at=stop_at)
    with pytest.raises(DriverError) as info:
        await steps.move_memory(driver, "a", MemoryPlan(GIB, -1), 4 * GIB, poll_s=0.0, stall_s=0.05)
    assert info.value.code is code and "memory stopped at" in info.value.message


async def test_a_driver_without_memory_refuses_it_clearly() -> None:
    class CpuOnly:
        name = "cpu-only"

    with pytest.raises(DriverError) as info:
        steps.resizer_of(CpuOnly())  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.HOTPLUG_DISABLED and "does not move memory" in info.value.message


# -- bounds from the config file -------------------------------------------------------------------------------------


def test_a_vm_rule_gives_the_actuator_memory_bounds() -> None:
    rules = [VmRule(match="db-*", min_memory="2GiB", max_memory=8192)]
    bounds = bounds_for("h", "db-1", Bounds(1, 8), rules)
    assert (bounds.min_memory_bytes, bounds.max_memory_bytes) == (2 * GIB, 8 * GIB)
    assert bounds_for("h", "web-1", Bounds(1, 8), rules).max_memory_bytes is None


@pytest.mark.parametrize(
    ("low", "high", "says"),
    [
        ("2GiB", "1GiB", "min_memory 2GiB is above max_memory 1GiB"),
        ("lots", "8GiB", "min_memory: 'lots' is not a memory size"),
        (0, "8GiB", "a size must be more than 0"),
        ("1GiB", "9 parsecs", "max_memory: '9 parsecs': unknown unit 'parsecs'"),
    ],
)
def test_bad_memory_bounds_in_a_rule_say_why(low: str | int, high: str, says: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=says):
        msgspec.convert({"match": "db-*", "min_memory": low, "max_memory": high}, VmRule)
