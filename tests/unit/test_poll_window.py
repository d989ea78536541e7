"""``a_window``: two readings a window apart that show what is measured, read window after window. Pure but for
the monotonic clock it waits on (windows of 20 ms)."""

from __future__ import annotations

import pytest

from hotplug.harness.poll import a_window


async def test_windows_are_read_back_to_back_until_one_holds() -> None:
    counter = iter(range(100))

    async def read() -> int:
        return next(counter)

    # the third window is the first whose end is at least 3: each starts where the last ended
    first, second = await a_window(read, 0.02, lambda a, b: b >= 3, timeout=5, what="a busy window")
    assert second >= 3 and first < second


async def test_no_window_that_holds_is_an_assertion_naming_it() -> None:
    async def read() -> int:
        return 0

    with pytest.raises(AssertionError, match="a busy window"):
        await a_window(read, 0.02, lambda a, b: b > a, timeout=0.2, what="a busy window")
