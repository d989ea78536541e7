"""``bus.ensure_streams``'s patience: a set-up whose request times out (a cluster still electing on a loaded
machine) is tried again until the patience runs out, and only then raises."""

from __future__ import annotations

from typing import Any

import pytest

from shared import bus


class SlowCluster:
    """Stands in for nats-py's JetStreamContext: its first ``timeouts`` lookups time out, as a just-started
    cluster's may; then every stream exists."""

    def __init__(self, timeouts: int) -> None:
        self.timeouts = timeouts
        self.lookups = 0

    async def stream_info(self, name: str) -> object:
        self.lookups += 1
        if self.lookups <= self.timeouts:
            raise TimeoutError
        return object()

    async def update_stream(self, config: Any) -> None:
        pass


async def test_a_timed_out_set_up_is_tried_again_within_the_patience() -> None:
    cluster = SlowCluster(timeouts=2)
    await bus.ensure_streams(cluster, reconcile=True, patience_s=60)  # type: ignore[arg-type]
    assert cluster.lookups == 2 + len(bus.stream_configs())


async def test_without_patience_the_first_timeout_is_raised() -> None:
    cluster = SlowCluster(timeouts=1)
    with pytest.raises(TimeoutError):
        await bus.ensure_streams(cluster)  # type: ignore[arg-type]
    assert cluster.lookups == 1
