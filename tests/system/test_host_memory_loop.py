"""One simulated host with 10 GiB of memory whose ``[[host]]`` rule keeps 3 GiB for itself (memory capacity 7 GiB),
two VMs of 4 GiB each, and memory orders sent as a decider would send them, through a real actuator process: a
shrink always passes, a grow past the capacity is cut short ``host-full`` (memory_after_bytes how far, the host's
memory capacity and what was committed, asked again after 2 s), a grow with no room left is refused without a
request, and the collector's HostState says the same capacity and committed memory. The simulated hypervisor alone
would have taken all of it (its limit is its 10 GiB): the actuator is what held it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from nats.aio.client import Client

from hotplug.harness.recorder import Recorder, hypervisor_memory
from hotplug.harness.scrape import metric_async
from shared import bus, subjects
from shared.broker import EmbeddedBroker
from shared.codec import encode
from shared.messages import ErrorCode, HostState, Resource, ScaleCommand, ScaleResult
from shared.units import GIB
from tests.conftest import ServiceProcess, eventually

HOST = "local"
CAPACITY = 7 * GIB  # (10 GiB - 3 GiB) x 1


class Watch(Recorder):
    """The recorder, keeping the host states too."""

    def __init__(self) -> None:
        super().__init__()
        self.hosts: list[HostState] = []

    def on_host_state(self, state: HostState) -> None:
        self.hosts.append(state)


async def order(nc: Client, watch: Watch, name: str, vm: str, target: int) -> ScaleResult:
    """Send one memory order for ``vm``, decided on its size now, and wait for its one result."""
    _, memory = await hypervisor_memory(nc, HOST)
    now = time.time()  # the shared clock runs at speed 1 from the epoch the services were given: wall time
    command = ScaleCommand(
        id=f"test-{name}", time=now, host=HOST, vm=vm, resource=Resource.MEMORY, target_memory_bytes=target,
        seen_memory_bytes=memory[vm].size_bytes, decider="test", reason=name, expires_at=now + 600,
    )  # fmt: skip
    await bus.publish_durable(nc.jetstream(), subjects.commands(HOST, vm), encode(command), msg_id=command.id)
    result = await watch.result_of(command.id, timeout_s=60)
    assert result is not None, f"no result for {name}"
    return result


async def test_a_memory_grow_past_the_hosts_memory_capacity_is_cut_short_then_refused(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    config = tmp_path / "hotplug.toml"
    config.write_text(f'[[host]]\nmatch = "{HOST}"\nreserve_memory = "3GiB"\n')
    watch = Watch()
    await watch.attach(nc, hosts=True)
    common = ["--nats", broker.url, "--host", HOST, "--epoch", repr(time.time())]
    # two idle VMs of up to 4 vCPUs, booted with 2: 4 GiB each, which is also their device's most
    start_service(
        "simulator", *common, "--vms", "2", "--profiles", "idle", "--max-vcpus", "4", "--host-memory", "10GiB"
    )
    start_service("collector", *common, "--interval", "1", "--config", str(config))
    actuator = start_service("actuator", *common, "--config", str(config))

    def host_state_seen() -> bool:
        return any(s.capacity_memory_bytes is not None for s in watch.hosts)

    await eventually(host_state_seen, timeout=30, what="a HostState with the host's memory")
    first = next(s for s in watch.hosts if s.capacity_memory_bytes is not None)
    # committed above the capacity from the start: a capacity lowered under running VMs strands nothing
    assert (first.memory_bytes, first.capacity_memory_bytes, first.committed_memory_bytes) == (
        10 * GIB,
        CAPACITY,
        8 * GIB,
    )

    shrink = await order(nc, watch, "shrink", "vm-01", 2 * GIB)
    assert shrink.ok and shrink.memory_after_bytes == 2 * GIB, shrink
    assert shrink.host_capacity_memory_bytes is None  # a shrink is never judged against the host

    cut = await order(nc, watch, "grow-cut", "vm-01", 4 * GIB)  # 2 GiB asked, 1 GiB of room (6 of 7 committed)
    assert cut.error_code is ErrorCode.HOST_FULL and cut.retry_after == 2.0, cut
    assert (cut.memory_before_bytes, cut.memory_after_bytes, cut.target_memory_bytes) == (2 * GIB, 3 * GIB, 4 * GIB)
    assert (cut.host_capacity_memory_bytes, cut.host_committed_memory_bytes) == (CAPACITY, 6 * GIB)
    assert cut.v == 2 and cut.host_capacity_vcpus is None

    none = await order(nc, watch, "grow-full", "vm-01", 4 * GIB)  # no room left at all: no request
    assert none.error_code is ErrorCode.HOST_FULL and none.retry_after == 2.0, none
    assert none.memory_after_bytes == none.memory_before_bytes == 3 * GIB
    assert none.host_committed_memory_bytes == CAPACITY

    simulated, memory = await hypervisor_memory(nc, HOST)
    assert simulated is not None and simulated.committed_memory_bytes == CAPACITY  # the hypervisor would take 10
    assert {vm: m.size_bytes for vm, m in memory.items()} == {"vm-01": 3 * GIB, "vm-02": 4 * GIB}

    def collector_agrees() -> bool:
        latest = watch.hosts[-1]
        return latest.committed_memory_bytes == CAPACITY and latest.capacity_memory_bytes == CAPACITY

    await eventually(collector_agrees, timeout=30, what="the collector's HostState with the host's memory full")
    assert len({r.command_id for r in watch.results}) == len(watch.results)  # one result each
    assert await metric_async(actuator.metrics_url, "hotplug_actuator_host_capacity_memory_bytes") == CAPACITY
    assert await metric_async(actuator.metrics_url, "hotplug_actuator_host_committed_memory_bytes") == CAPACITY
