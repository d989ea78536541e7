"""The actuator service in this process (an asyncio task) against a real nats-server, with a fake driver
(tests/stubs.py): commands are stored in the event log as a decider stores them, results are watched on the bus.

To show that something did *not* happen (no second result), each test ends with a later command for the same VM
and waits for its result: the actuator answers one VM's commands in order, so anything owed before it is out.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

import msgspec
import pytest
from nats.aio.client import Client

from hotplug.harness import faults
from hotplug.harness.poll import eventually
from hotplug.harness.recorder import Recorder
from services.actuator.drivers.base import DriverError
from services.actuator.service import Actuator, ActuatorConfig, ActuatorMetrics
from shared import bus
from shared.config.schema import HostRule
from shared.leadership import LEASE_BUCKET, LeaseState
from shared.messages import ErrorCode, ScaleCommand, ScaleResult
from shared.runtime import ServiceContext
from tests.component.conftest import InProcess, Serve
from tests.stubs import FakeDriver, FakeHostDriver

HOST = "h1"
VM = "vm"


def order(target: int, seen: int) -> ScaleCommand:
    return faults.order(HOST, VM, target, seen, ttl_s=30.0)


async def store(nc: Client, command: ScaleCommand, *, copy: bool = False) -> None:
    """Store ``command`` as a decider does; a ``copy`` is stored again, as one that got past the event log's
    de-duplication would be."""
    if copy:
        await faults.store(nc, command)
    else:
        await faults.store_durably(nc, command)


async def result(results: Recorder, command: ScaleCommand) -> ScaleResult:
    found = await results.result_of(command.id, timeout_s=10)
    assert found is not None, f"no result of {command.id}"
    return found


Start = Callable[..., Awaitable[InProcess[ActuatorMetrics]]]


@pytest.fixture
def start_actuator(serve: Serve) -> Start:
    async def start(
        driver: FakeDriver, config: ActuatorConfig | None = None, host_rules: tuple[HostRule, ...] = ()
    ) -> InProcess[ActuatorMetrics]:
        async def body(ctx: ServiceContext[ActuatorMetrics]) -> None:
            await Actuator(ctx, driver, config or ActuatorConfig(), host_rules=host_rules).run()

        return await serve(ActuatorMetrics("actuator"), body, HOST)

    return start


@pytest.fixture
async def results(nc: Client) -> Recorder:
    watched = Recorder()
    await watched.attach(nc, samples=False, commands=False)
    return watched


async def test_a_command_gets_exactly_one_result_saying_what_happened(
    nc: Client, results: Recorder, start_actuator: Start
) -> None:
    driver = FakeDriver(online=2)
    await start_actuator(driver)
    grow = order(4, seen=2)
    await store(nc, grow)
    done = await result(results, grow)
    assert (done.ok, done.vcpus_before, done.vcpus_after, done.target_vcpus) == (True, 2, 4, 4), done
    assert (done.allowed_min_vcpus, done.allowed_max_vcpus) == (1, 8)
    last = order(3, seen=4)
    await store(nc, last)
    await result(results, last)
    assert len(results.results_of(grow.id)) == 1
    assert driver.calls == ["plug", "plug", "unplug"]


async def test_a_step_the_vm_does_not_take_ends_the_command_not_verified(
    nc: Client, results: Recorder, start_actuator: Start
) -> None:
    driver = FakeDriver(online=2, moves=[1, 0])
    await start_actuator(driver)
    grow = order(5, seen=2)
    await store(nc, grow)
    failed = await result(results, grow)
    assert (failed.ok, failed.error_code) == (False, ErrorCode.NOT_VERIFIED), failed
    # the result reports the change that did happen, and no step follows the one that failed
    assert (failed.vcpus_before, failed.vcpus_after) == (2, 3)
    assert driver.calls == ["plug", "plug"]


async def test_a_copy_of_a_command_is_not_executed_again_while_under_way_or_once_answered(
    nc: Client, results: Recorder, start_actuator: Start
) -> None:
    driver = FakeDriver(online=2, gate=asyncio.Event())
    actuator = await start_actuator(driver)
    grow = order(3, seen=2)
    await store(nc, grow)
    await driver.entered.wait()  # under way: the hypervisor is plugging
    await store(nc, grow, copy=True)
    duplicates = "hotplug_messages_dropped_total"
    await eventually(
        lambda: actuator.count(duplicates, kind="command", reason="duplicate") == 1, timeout=10, what="the copy"
    )
    assert driver.gate is not None
    driver.gate.set()
    assert (await result(results, grow)).ok
    await store(nc, grow, copy=True)
    await eventually(
        lambda: actuator.count(duplicates, kind="command", reason="duplicate") == 2, timeout=10, what="the copy"
    )
    last = order(2, seen=3)
    await store(nc, last)
    await result(results, last)
    assert len(results.results_of(grow.id)) == 1
    assert driver.calls == ["plug", "unplug"]


async def test_a_command_redelivered_after_its_actuator_died_mid_step_is_settled_not_executed_again(
    nc: Client, results: Recorder, start_actuator: Start
) -> None:
    # short enough for JetStream to redeliver within the test; the same for both actuators (one consumer)
    config = ActuatorConfig(ack_wait_s=1.0, settle_s=0.3)
    hung = FakeDriver(online=2, gate=asyncio.Event())
    first = await start_actuator(hung, config)
    grow = order(3, seen=2)
    await store(nc, grow)
    await hung.entered.wait()
    await first.stop()  # died mid-step: no result, no acknowledgement

    driver = FakeDriver(online=2)  # the step never happened
    second = await start_actuator(driver, config)
    settled = await result(results, grow)
    assert not settled.ok and (settled.vcpus_before, settled.vcpus_after) == (2, 2), settled
    # JetStream redelivers the unacknowledged command: the new actuator takes it for the duplicate it is
    dropped = "hotplug_messages_dropped_total"
    await eventually(
        lambda: second.count(dropped, kind="command", reason="duplicate") >= 1, timeout=10, what="the redelivery"
    )
    last = order(4, seen=2)
    await store(nc, last)
    assert (await result(results, last)).ok
    assert len(results.results_of(grow.id)) == 1
    assert driver.calls == ["plug", "plug"]  # the later command's only


async def test_a_command_with_a_newer_one_waiting_is_superseded_and_says_so(
    nc: Client, results: Recorder, start_actuator: Start
) -> None:
    driver = FakeDriver(online=2, gate=asyncio.Event())
    actuator = await start_actuator(driver)
    first, older, newer = order(3, seen=2), order(4, seen=3), order(5, seen=3)
    await store(nc, first)
    await driver.entered.wait()
    await store(nc, older)
    await store(nc, newer)
    received = "hotplug_messages_received_total"
    await eventually(
        lambda: actuator.count(received, kind="command") == 3, timeout=10, what="both later commands taken in"
    )
    assert driver.gate is not None
    driver.gate.set()
    assert (await result(results, first)).ok
    superseded = await result(results, older)
    assert (superseded.ok, superseded.error_code, superseded.retry_after) == (False, ErrorCode.SUPERSEDED, 0.0)
    done = await result(results, newer)
    assert (done.ok, done.vcpus_before, done.vcpus_after) == (True, 3, 5), done
    assert [len(results.results_of(c.id)) for c in (first, older, newer)] == [1, 1, 1]
    assert driver.calls == ["plug", "plug", "plug"]


async def test_a_resize_beyond_the_rate_limit_is_refused_with_when_to_ask_again(
    nc: Client, results: Recorder, start_actuator: Start
) -> None:
    driver = FakeDriver(online=2)
    await start_actuator(driver, ActuatorConfig(max_changes=1, rate_window_s=60.0))
    grow = order(3, seen=2)
    await store(nc, grow)
    assert (await result(results, grow)).ok
    again = order(4, seen=3)
    await store(nc, again)
    refused = await result(results, again)
    assert (refused.ok, refused.error_code) == (False, ErrorCode.RATE_LIMITED), refused
    assert refused.retry_after is not None and 0 < refused.retry_after <= 60
    assert refused.vcpus_before == refused.vcpus_after == 3
    assert driver.calls == ["plug"]


async def test_a_driver_error_is_the_result_with_the_hypervisors_code(
    nc: Client, results: Recorder, start_actuator: Start
) -> None:
    driver = FakeDriver(online=3, fail=DriverError(ErrorCode.GUEST_REFUSED, "Hot-Remove was aborted"))
    await start_actuator(driver)
    shrink = order(2, seen=3)
    await store(nc, shrink)
    refused = await result(results, shrink)
    assert (refused.ok, refused.error_code, refused.error) == (False, ErrorCode.GUEST_REFUSED, "Hot-Remove was aborted")
    assert refused.retry_after is not None and refused.retry_after > 0  # a back-off, not an immediate retry


async def test_a_grow_gets_what_fits_on_the_host_then_none_and_a_shrink_always_passes(
    nc: Client, results: Recorder, start_actuator: Start
) -> None:
    # 8 CPUs, but the [[host]] rule keeps 2 for the host: capacity 6, of which 2 + 3 (a VM no command moves) are taken
    driver = FakeHostDriver(online=2, cpus=8, others={"unmanaged": 3})
    actuator = await start_actuator(driver, host_rules=(HostRule(match="h*", reserve_cpus=2),))
    grow = order(5, seen=2)
    await store(nc, grow)
    part = await result(results, grow)
    assert (part.ok, part.error_code, part.vcpus_before, part.vcpus_after) == (False, ErrorCode.HOST_FULL, 2, 3), part
    assert part.error == "granted 1 of 3 vCPUs asked: host h1 has capacity 6, 5 committed"
    assert (part.host_capacity_vcpus, part.host_committed_vcpus, part.retry_after) == (6, 5, 2.0)
    again = order(4, seen=3)
    await store(nc, again)
    full = await result(results, again)
    assert (full.ok, full.error_code, full.vcpus_before, full.vcpus_after) == (False, ErrorCode.HOST_FULL, 3, 3), full
    assert (full.host_committed_vcpus, full.retry_after) == (6, 2.0)
    assert full.error == "granted 0 of 1 vCPUs asked: host h1 has capacity 6, 6 committed"
    shrink = order(2, seen=3)
    await store(nc, shrink)
    done = await result(results, shrink)
    assert (done.ok, done.vcpus_after, done.host_capacity_vcpus) == (True, 2, None), done
    assert driver.calls == ["plug", "unplug"]
    assert actuator.count("hotplug_actuator_actions_total", outcome="error", error_code="host-full") == 2
    assert actuator.count("hotplug_actuator_host_capacity_vcpus") == 6
    await eventually(
        lambda: actuator.count("hotplug_actuator_host_committed_vcpus") == 5, timeout=10, what="the freed vCPU"
    )


async def test_the_host_is_read_afresh_before_each_grow(nc: Client, results: Recorder, start_actuator: Start) -> None:
    driver = FakeHostDriver(online=2, cpus=4, others={"other": 2})
    # a refresh for the metrics only once an hour: what each grow sees is its own reading
    await start_actuator(driver, ActuatorConfig(host_refresh_s=3600))
    grow = order(3, seen=2)
    await store(nc, grow)
    assert (await result(results, grow)).error_code is ErrorCode.HOST_FULL
    driver.others = {"other": 1}  # the other VM shrank (or stopped) meanwhile
    again = order(3, seen=2)
    await store(nc, again)
    grown = await result(results, again)
    assert (grown.ok, grown.vcpus_after, grown.host_committed_vcpus) == (True, 3, 3), grown


async def test_a_driver_that_reports_no_host_leaves_grows_unheld(
    nc: Client, results: Recorder, start_actuator: Start
) -> None:
    driver = FakeDriver(online=2)  # as an older plug-in: no host_view
    actuator = await start_actuator(driver, host_rules=(HostRule(match="*", cpus=1),))
    grow = order(6, seen=2)
    await store(nc, grow)
    done = await result(results, grow)
    assert (done.ok, done.vcpus_after, done.host_capacity_vcpus) == (True, 6, None), done
    assert math.isnan(actuator.count("hotplug_actuator_host_capacity_vcpus"))


async def test_a_deposed_leaders_late_order_is_refused_from_the_lease_bucket_before_its_successor_orders(
    nc: Client, results: Recorder, start_actuator: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """The actuator reads each lease's term from the lease bucket, so an order of an older term is refused as
    stale-term although the new leader has sent nothing yet. A lease it cannot understand is said as a warning
    (before, any trouble reading the terms went to a debug line: under ``hotplug auth`` they were never read)."""
    leases = await bus.key_value(nc.jetstream(), LEASE_BUCKET)
    await leases.put("deciders", msgspec.json.encode(LeaseState("successor", 5, 1e12)))
    await leases.put("broken", b"not a lease")
    with caplog.at_level(logging.WARNING, logger="services.actuator.service"):
        await start_actuator(FakeDriver(online=2))

        def said_broken() -> bool:  # said once the terms of that reading are learned
            return any("'broken' not understood" in r.getMessage() for r in caplog.records)

        await eventually(said_broken, timeout=10, what="the lease bucket read")
        late = msgspec.structs.replace(order(3, seen=2), decider="deciders", term=4)
        await store(nc, late)
        refused = await result(results, late)
    assert (refused.ok, refused.error_code) == (False, ErrorCode.STALE_TERM), refused
