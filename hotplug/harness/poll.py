"""Waiting for a condition: the one poll-until loop, for coroutines (which must not block) and for plain code."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

# A condition may be plain or a coroutine function (one that scrapes metrics on a thread, for instance).
Predicate = Callable[[], object] | Callable[[], Awaitable[object]]
R = TypeVar("R")  # a reading


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


async def a_window(
    read: Callable[[], Awaitable[R]],
    seconds: float,
    holds: Callable[[R, R], bool],
    timeout: float,  # noqa: ASYNC109 (bounds the polling, as eventually's)
    what: str,
) -> tuple[R, R]:
    """Two readings at least ``seconds`` apart (a window a rate is measured over) for which ``holds``: windows
    are read back to back, each from the end of the last, until one holds; an ``AssertionError`` naming ``what``
    after ``timeout`` seconds. On a loaded machine a window may find a busy process starved: the next one is read."""
    start, since = await read(), time.monotonic()
    found: list[tuple[R, R]] = []

    async def window_holds() -> bool:
        nonlocal start, since
        if time.monotonic() - since < seconds:
            return False
        end = await read()
        if holds(start, end):
            found.append((start, end))
            return True
        start, since = end, time.monotonic()
        return False

    await eventually(window_holds, timeout=timeout, interval=0.1, what=what)
    return found[0]
