"""A sharded decider member takes up only its own partitions' samples: a batch fetched (or a fetch answered) under
the old filter, just before a reshard handed partitions over, still holds samples of VMs that another member owns
now; handing them on would take those VMs up again here and decide them twice (a loaded fresh-clone run of
tests/system/test_sharding.py saw a member hold VMs it had handed over). A fake pull subscription stands in for
JetStream."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

import pytest

from services.decider.sharding import ShardedIntake
from shared import subjects


@dataclass
class Msg:
    subject: str
    data: bytes = b""


class OneBatch:
    """Answers one fetch with ``msgs``, then ends the loop."""

    def __init__(self, msgs: list[Msg]) -> None:
        self.msgs: list[Msg] | None = msgs

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        if self.msgs is None:
            raise asyncio.CancelledError
        msgs, self.msgs = self.msgs, None
        return msgs


def test_the_partition_of_a_stored_subject() -> None:
    assert subjects.stored_partition(f"{subjects.METRICS}.7.host-a.vm-01") == 7
    assert subjects.stored_partition(f"{subjects.METRICS}.x.host-a.vm-01") is None
    assert subjects.stored_partition("hotplug.commands.host-a.vm-01") is None


async def test_samples_of_partitions_handed_over_are_not_taken_up() -> None:
    handled: list[str] = []

    async def handle(subject: str, data: bytes) -> None:
        handled.append(subject)

    async def on_share(share: frozenset[int]) -> None:
        return None

    intake = ShardedIntake(cast(Any, None), "g", "d2", handle, on_share)
    intake.share = frozenset({3})  # partition 5 was just handed over
    mine, theirs = f"{subjects.METRICS}.3.h1.vm-01", f"{subjects.METRICS}.5.h2.vm-01"
    intake._psub = cast(Any, OneBatch([Msg(mine), Msg(theirs), Msg(mine)]))
    with pytest.raises(asyncio.CancelledError):
        await intake._fetch_loop()
    assert handled == [mine, mine]
