"""In-process stand-ins for a service's runtime context (clock, options, JetStream), for tests that drive a
service object directly without a broker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FixedClock:
    t: float = 0.0

    def now(self) -> float:
        return self.t


@dataclass
class RecordingJetStream:
    published: list[bytes] = field(default_factory=list)

    async def publish(self, subject: str, payload: bytes, **_: Any) -> None:
        self.published.append(payload)


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
