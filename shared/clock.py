"""The shared clock: wall time, or simulated time running ``speed`` times faster from a common epoch.

Every service of one run gets the same ``epoch`` and ``speed``, so they agree on "now" without talking.
Sample times, cooldowns, expiries and hot-plug delays are all in this clock's seconds.
"""

from __future__ import annotations

import asyncio
import time

import msgspec


class Clock(msgspec.Struct, frozen=True):
    speed: float = 1.0
    # Wall time at which simulated time started; simulated time equals wall time at that instant.
    epoch: float = 0.0

    def now(self) -> float:
        wall = time.time()
        if self.speed == 1.0:
            return wall
        return self.epoch + (wall - self.epoch) * self.speed

    def wall_time(self, t: float) -> float:
        """The wall-clock time at which this clock reads ``t``."""
        return t if self.speed == 1.0 else self.epoch + (t - self.epoch) / self.speed

    def wall_seconds(self, seconds: float) -> float:
        """How long ``seconds`` of this clock take on the wall clock."""
        return seconds / self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


def make_clock(speed: float, epoch: float | None) -> Clock:
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    return Clock(speed=speed, epoch=time.time() if epoch is None else epoch)
