"""Memory through the whole loop, as separate processes on a real nats-server and the simulated mini-cloud: the
decider's memory rule gives back memory an idle VM holds, the actuator moves it (in its memory lane) and the next
samples show it, with no OOM kill; orders the actuator must refuse (below what the guest uses, past the device)
end in one result each, with their codes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from nats.aio.client import Client

from hotplug.harness.recorder import Recorder
from shared import bus, subjects
from shared.broker import EmbeddedBroker
from shared.codec import encode
from shared.messages import ErrorCode, MetricSample, Resource, ScaleCommand, ScaleResult
from shared.units import GIB
from tests.conftest import ServiceProcess, eventually

SPEED = "4"
HOST = "local"


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("memory-loop")
    rules = tmp / "hotplug.toml"
    rules.write_text('[[vm]]\nmatch = "vm-02"\nautoscale = "off"\n')
    with EmbeddedBroker(tmp / "nats") as broker:
        common = ["--nats", broker.url, "--host", HOST, "--speed", SPEED]
        specs: dict[str, list[str]] = {
            # VMs of up to 4 vCPUs, 2 GiB of memory a vCPU: vm-01 idle, vm-02 serving a model (more than its 1 GiB
            # of boot RAM in use)
            "simulator": ["--vms", "2", "--profiles", "idle,inference", "--max-vcpus", "4", "--hotplug-delay", "0.1"],
            "actuator": [],
            # a short window of evidence, so a shrink comes within the test; the rule is the default otherwise. The
            # decider leaves vm-02 alone: the test's own orders go to it.
            "decider": [
                "--param",
                "memory.window_samples=20",
                "--param",
                "memory.shrink_interval_s=10",
                "--config",
                str(rules),
            ],
            "collector": ["--interval", "1"],
        }
        services: list[ServiceProcess] = []
        try:
            for name, extra in specs.items():
                proc = ServiceProcess([name, *common, *extra], tmp / f"{name}.log")
                proc.wait_ready()
                services.append(proc)
            yield broker.url
        finally:
            for proc in services:
                proc.stop()


@pytest.fixture
async def bus_of(loop: str) -> AsyncIterator[tuple[Client, Recorder]]:
    nc = await bus.connect(loop, "test", forever=False)
    recorder = Recorder()
    await recorder.attach(nc)
    yield nc, recorder
    await nc.close()


def memory_results(recorder: Recorder, vm: str) -> list[ScaleResult]:
    return [r for r in recorder.results if r.vm == vm and r.resource is Resource.MEMORY]


def latest(recorder: Recorder, vm: str) -> MetricSample | None:
    return next((s for s in reversed(recorder.samples) if s.vm == vm and s.memory is not None), None)


async def test_an_idle_vm_gives_memory_back_through_the_loop(bus_of: tuple[Client, Recorder]) -> None:
    _, recorder = bus_of
    vm = "vm-01"

    def given_back() -> bool:
        return any(
            r.ok and (r.memory_after_bytes or 0) < (r.memory_before_bytes or 0) for r in memory_results(recorder, vm)
        )

    await eventually(given_back, timeout=90, what="a memory shrink of the idle VM, answered ok")
    shrink = next(r for r in memory_results(recorder, vm) if r.ok)
    assert shrink.memory_after_bytes is not None and shrink.memory_before_bytes is not None
    assert shrink.memory_before_bytes - shrink.memory_after_bytes <= shrink.memory_before_bytes // 4 + 2 * 1024**2

    def sample_shows_it() -> bool:
        sample = latest(recorder, vm)
        return (
            sample is not None
            and sample.memory is not None
            and sample.memory.size_bytes <= (shrink.memory_after_bytes or 0)
        )

    await eventually(sample_shows_it, timeout=30, what="a sample with the smaller size")
    sample = latest(recorder, vm)
    assert sample is not None and sample.memory is not None
    assert sample.memory.oom_kills == 0 and (sample.memory.used_bytes or 0) < sample.memory.size_bytes

    # The memory lane does not hold the vCPU lane: a vCPU order right after the memory change goes through.
    nc, _ = bus_of
    target = 1 if sample.online_vcpus > 1 else 2
    order = ScaleCommand(
        id="test-vcpu-after-memory", time=sample.time, host=HOST, vm=vm, target_vcpus=target,
        seen_vcpus=sample.online_vcpus, decider="test", reason="a vCPU order beside memory",
        expires_at=sample.time + 600,
    )  # fmt: skip
    await bus.publish_durable(nc.jetstream(), subjects.commands(HOST, vm), encode(order), msg_id=order.id)

    def vcpu_answered() -> ScaleResult | None:
        return next((r for r in recorder.results if r.command_id == order.id), None)

    await eventually(lambda: vcpu_answered() is not None, timeout=30, what="a result for the vCPU order")
    result = vcpu_answered()
    assert result is not None
    assert result.ok and result.resource is Resource.VCPU and result.vcpus_after == target, result


async def test_orders_below_use_or_past_the_device_are_refused_with_their_codes(
    bus_of: tuple[Client, Recorder],
) -> None:
    nc, recorder = bus_of
    vm = "vm-02"
    await eventually(lambda: latest(recorder, vm) is not None, timeout=30, what="a sample of vm-02 with memory")
    sample = latest(recorder, vm)
    assert sample is not None and sample.memory is not None
    size, used = sample.memory.size_bytes, sample.memory.used_bytes or 0
    js = nc.jetstream()
    assert used > sample.memory.min_bytes + 128 * 1024**2, "the model should hold more than boot RAM"
    orders = {
        "below-used": (used + sample.memory.min_bytes) // 2 // (2 * 1024**2) * (2 * 1024**2),  # between boot and use
        "past-the-device": sample.memory.max_bytes + GIB,
    }
    # One after the other: a command sent while the one before still waits would supersede it (the actuator runs the
    # newest order for a VM), which a loaded run once showed.
    for name, target in orders.items():
        command = ScaleCommand(
            id=f"test-{name}", time=sample.time, host=HOST, vm=vm, resource=Resource.MEMORY,
            target_memory_bytes=target, seen_memory_bytes=size, decider="test", reason=name,
            expires_at=sample.time + 600,
        )  # fmt: skip
        await bus.publish_durable(js, subjects.commands(HOST, vm), encode(command), msg_id=command.id)
        await eventually(
            lambda command=command: any(r.command_id == command.id for r in recorder.results),
            timeout=30,
            what=f"a result for {command.id}",
        )
    by_id = {r.command_id: r for r in recorder.results if r.command_id.startswith("test-")}
    below, past = by_id["test-below-used"], by_id["test-past-the-device"]
    assert below.error_code is ErrorCode.BELOW_USED, below
    assert below.guest_used_bytes is not None and "would leave the guest less than it uses" in (below.error or "")
    assert below.memory_after_bytes == below.memory_before_bytes == size
    assert past.error_code is ErrorCode.OUT_OF_BOUNDS and past.memory_after_bytes == past.memory_before_bytes
    assert len([r for r in recorder.results if r.command_id.startswith("test-")]) == len(orders)  # one result each
