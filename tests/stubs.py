"""In-process stand-ins: a service's runtime context (clock, options, JetStream), for tests that drive a service
object directly without a broker; and an actuator driver with a fake hypervisor."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from services.actuator.drivers.base import DriverError, HostView, VmView
from shared.messages import ErrorCode


@dataclass
class FixedClock:
    t: float = 0.0

    def now(self) -> float:
        return self.t


@dataclass
class RecordingJetStream:
    published: list[bytes] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)  # each one's subject, in the same order

    async def publish(self, subject: str, payload: bytes, **_: Any) -> None:
        self.published.append(payload)
        self.subjects.append(subject)


@dataclass
class StubOptions:
    clock: FixedClock
    host: str = "h"


@dataclass
class StubContext:
    """What ``shared.runtime.ServiceContext`` gives a service: its options, clock, host, metrics and JetStream."""

    options: StubOptions
    metrics: Any
    js: Any = None

    @property
    def clock(self) -> FixedClock:
        return self.options.clock

    @property
    def host(self) -> str:
        return self.options.host


@dataclass
class FakeDriver:
    """An actuator driver for one VM, whose hypervisor can be told to misbehave. ``moves`` says how far each plug
    or unplug really moves the count (1 when empty, taken in order); ``fail`` makes every hot-plug call raise it;
    with a ``gate``, hot-plug calls wait until it is set (never: a hung hypervisor). ``entered`` is set once a
    hot-plug call has started, so a test knows a command is under way."""

    online: int = 2
    low: int = 1
    high: int = 8
    vm: str = "vm"
    moves: list[int] = field(default_factory=list)
    fail: DriverError | None = None
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[str] = field(default_factory=list)
    name: str = "fake"

    async def read(self, vm: str) -> VmView:
        if vm != self.vm:
            raise DriverError(ErrorCode.VM_NOT_FOUND, f"Could not find a registered machine named '{vm}'")
        return VmView(vm=vm, online_vcpus=self.online, min_vcpus=self.low, max_vcpus=self.high)

    async def _step(self, op: str, sign: int) -> None:
        self.calls.append(op)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.online += sign * (self.moves.pop(0) if self.moves else 1)

    async def plug(self, vm: str) -> None:
        await self._step("plug", 1)

    async def unplug(self, vm: str) -> None:
        await self._step("unplug", -1)

    async def close(self) -> None:
        return None


@dataclass
class FakeHostDriver(FakeDriver):
    """A :class:`FakeDriver` that reports its host: ``cpus`` CPUs, its VM, and ``others`` (VM -> online vCPUs)
    running beside it that no command moves."""

    cpus: int = 4
    others: dict[str, int] = field(default_factory=dict)
    views: int = 0  # host views read

    async def host_view(self) -> HostView:
        self.views += 1
        return HostView(cpus=self.cpus, vms={self.vm: self.online, **self.others})
