"""Step-and-verify (services/actuator/steps.py), shared by the actuator and ``hotplug vbox|qemu|libvirt set``,
against a fake driver whose hypervisor can be told to misbehave (tests/stubs.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotplug.hypervisors.resize import resize as resize_command
from services.actuator import steps
from services.actuator.checks import Bounds, Plan, Refusal
from services.actuator.drivers.base import DriverError
from shared.messages import ErrorCode
from tests.stubs import FakeDriver


@given(start=st.integers(1, 8), target=st.integers(1, 8))
async def test_an_honest_vm_reaches_any_target_within_bounds_one_step_per_vcpu(start: int, target: int) -> None:
    driver = FakeDriver(online=start)
    assert await steps.resize(driver, "vm", target) == steps.Resized(start, target)
    assert driver.calls == ["plug" if target > start else "unplug"] * abs(target - start)


@pytest.mark.parametrize(
    ("target", "bounds"), [(9, None), (0, None), (5, Bounds(max_vcpus=4)), (2, Bounds(min_vcpus=3))]
)
async def test_a_target_outside_the_hypervisors_or_the_given_bounds_is_refused_untouched(
    target: int, bounds: Bounds | None
) -> None:
    driver = FakeDriver(online=3)
    refused = await steps.resize(driver, "vm", target, bounds=bounds)
    assert isinstance(refused, Refusal) and refused.code is ErrorCode.OUT_OF_BOUNDS, refused
    assert driver.calls == []


@pytest.mark.parametrize(
    ("moves", "target", "done"),
    [
        ([0], 4, 0),  # the plug was accepted and nothing moved
        ([1, 2], 5, 1),  # the second plug added two vCPUs
        ([-1], 3, 0),  # the count went the wrong way
        ([1, 0], 1, 1),  # shrinking: the second unplug did not take (target below start)
    ],
)
async def test_a_step_that_does_not_move_the_count_by_exactly_one_stops_the_resize(
    moves: list[int], target: int, done: int
) -> None:
    start = 2 if target > 2 else 3
    driver = FakeDriver(online=start, moves=list(moves))
    failed = await steps.resize(driver, "vm", target)
    assert isinstance(failed, Refusal) and failed.code is ErrorCode.NOT_VERIFIED, failed
    # no step is taken after the one that could not be verified
    assert len(driver.calls) == done + 1


async def test_take_steps_reports_each_step_and_returns_the_count_read_after_the_last() -> None:
    driver = FakeDriver(online=4)
    seen: list[str] = []

    async def before() -> None:
        seen.append(f"before {driver.online}")

    def after() -> None:
        seen.append(f"after {driver.online}")

    assert await steps.take_steps(driver, "vm", Plan(-1, 2), 4, before_step=before, after_step=after) == 2
    assert seen == ["before 4", "after 3", "before 3", "after 2"]


async def test_the_drivers_error_is_the_outcome_with_its_code_and_message() -> None:
    driver = FakeDriver(fail=DriverError(ErrorCode.GUEST_REFUSED, "Hot-Remove was aborted"))
    assert await steps.resize(driver, "vm", 1) == Refusal(ErrorCode.GUEST_REFUSED, "Hot-Remove was aborted")
    missing = await steps.resize(driver, "other", 1)
    assert isinstance(missing, Refusal) and missing.code is ErrorCode.VM_NOT_FOUND


async def test_a_driver_call_past_its_deadline_is_a_timeout() -> None:
    failed = await steps.resize(FakeDriver(gate=asyncio.Event()), "vm", 3, timeout_s=0.01)
    assert isinstance(failed, Refusal) and failed.code is ErrorCode.TIMEOUT
    assert "fake did not answer" in failed.message


async def test_the_command_prints_one_json_line_or_code_and_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert await resize_command(FakeDriver(online=2), "vm", 4) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == [
        {"vm": "vm", "ok": True, "vcpus_before": 2, "vcpus_after": 4}
    ]
    assert err == ""

    assert await resize_command(FakeDriver(online=2, moves=[0]), "vm", 3) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "not-verified: after one plug the VM has 2 vCPUs, expected 3\n"

    assert await resize_command(FakeDriver(online=2), "vm", 9) == 1
    assert capsys.readouterr().err == "out-of-bounds: target 9 outside [1, 8]\n"
