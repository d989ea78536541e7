"""A collector source from outside Hot-Plug Heaven, in one file: VMs that keep a steady share of their vCPUs busy.

Importing this module registers the source ``toy``; no line of the command line changes. Name the file in
``$HOTPLUG_PLUGINS`` and it is one of ``--source``'s choices:

    HOTPLUG_PLUGINS=examples/toy_source.py hotplug collector --source toy --toy-load 0.8 --nats nats://127.0.0.1:4222

Its config is a msgspec Struct that checks itself, and each of its fields is an option of the collector: a flag
(``--toy-vms``, ``--toy-load``, with the field's description as its help) and a key of the config file's
``[plugins.toy]`` table (``toy_load = 0.8``); the flag beats the file, the file the field's default.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from services.collector.sources.base import Reading, Source
from services.collector.sources.registry import SOURCES
from shared.clock import Clock
from shared.errors import UsageError
from shared.runtime import ServiceContext


class ToyConfig(msgspec.Struct, frozen=True):
    toy_vms: Annotated[int, msgspec.Meta(description="the toy VMs to report")] = 2
    toy_load: Annotated[float, msgspec.Meta(description="the share of its vCPUs each VM keeps busy")] = 0.5

    def __post_init__(self) -> None:
        if self.toy_vms < 1:
            raise UsageError(f"toy_vms must be at least 1, got {self.toy_vms}")
        if not 0.0 <= self.toy_load <= 1.0:
            raise UsageError(f"toy_load is a share of the vCPUs, from 0 to 1, got {self.toy_load}")


class ToySource:
    name = "toy"

    def __init__(self, config: ToyConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.start = clock.now()

    async def read(self) -> list[Reading]:
        now, vcpus = self.clock.now(), 2
        busy = self.config.toy_load * vcpus * (now - self.start)  # counters, not rates: seconds since start
        return [
            Reading(vm=f"toy-{i:02d}", time=now, online_vcpus=vcpus, min_vcpus=1, max_vcpus=4, cpu_seconds=busy)
            for i in range(1, self.config.toy_vms + 1)
        ]

    async def close(self) -> None:
        pass


@SOURCES.register("toy", ToyConfig)
def build(config: ToyConfig, ctx: ServiceContext[Any]) -> Source:
    return ToySource(config, ctx.clock)
