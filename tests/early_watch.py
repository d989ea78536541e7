"""A nats-py KV watch that says "all in" before it hands anything over, as nats-py's may
(nats-io/nats.py#842): for the tests of what reads a bucket's current entries."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.kv import KeyValue


def watch_saying_all_in_first(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Patch ``KeyValue.watch`` so that each watch first says "all in", then hands nothing over until the
    returned event is set (set it once the test has looked)."""
    real_watch = KeyValue.watch
    looked = asyncio.Event()

    async def early(self: KeyValue, keys: str, **kwargs: object) -> object:
        watcher = await real_watch(self, keys, **kwargs)

        class Early:
            told = False

            def __aiter__(self) -> Early:
                return self

            async def __anext__(self) -> object:
                if not self.told:
                    self.told = True
                    return None
                await looked.wait()
                return await watcher.__anext__()  # type: ignore[no-untyped-call]

            async def stop(self) -> None:
                await watcher.stop()  # type: ignore[no-untyped-call]

        return Early()

    monkeypatch.setattr(KeyValue, "watch", early)
    return looked
