"""Waiting for a condition: the one poll-until loop, for coroutines (which must not block) and for plain code."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

# A condition may be plain or a coroutine function (one that scrapes metrics on a thread, for instance).
Predicate = Callable[[], object] | Callable[[], Awaitable[object]]


async def _holds(predicate: Predicate) -> bool:
    value = predicate()
    if inspect.isawaitable(value):
        value = await value
    return bool(value)


async def within(timeout_s: float, predicate: Predicate, interval_s: float = 0.2) -> bool:
    """Whether ``predicate()`` becomes truthy within ``timeout_s`` seconds, asked every ``interval_s``."""
    deadline = time.monotonic() + timeout_s
    while not await _holds(predicate):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval_s)
    return True


async def eventually(
    predicate: Predicate,
    timeout: float = 20.0,  # noqa: ASYNC109 (the tests' keyword: it bounds the polling, no one awaited call)
    interval: float = 0.1,
    what: str = "condition",
) -> None:
    """Wait until ``predicate()`` is truthy; an ``AssertionError`` naming ``what`` after ``timeout`` seconds."""
    if not await within(timeout, predicate, interval):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.2) -> bool:
    """``within`` for code outside an event loop (a synchronous test or benchmark): this one sleeps."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True
