"""Urgent samples, the pure part: the text of a PSI trigger, and when an urgent sample may go out.

The guest agent asks the kernel to wake it when CPU pressure passes a threshold (a PSI trigger, kernel
``Documentation/accounting/psi.rst``): ``some STALL WINDOW`` written to ``/proc/pressure/cpu``, both in
microseconds, fires when runnable tasks waited at least STALL within any WINDOW. The agent then publishes an extra,
*urgent* sample over the interval since its last one, rather than letting the load wait for the next regular
sample. The shell that opens the file and waits is ``services.collector.sources.psi_watch``; the collector sends
the sample (``services.collector.service``).

A VM whose guest cannot say its pressure (on a host-side source: psutil, VirtualBox, libvirt for other guests
than the project's) has its rises followed: after a round in which some VM's use rose by at least ``RISE_SHARE`` of
its vCPUs, an urgent round follows ``follow_up_s(interval)`` later, and again while the rise goes on. A load step
seen in part by a regular sample (it began within that sample's interval) is so seen whole a quarter interval
later, not a whole one.

Nothing here does I/O or reads a clock: times are passed in.
"""

from __future__ import annotations

import math

import msgspec

# The kernel's bounds on a trigger's window (psi.rst): from 500 ms (checked 10 times a window: every 50 ms) to 10 s.
WINDOW_MIN_S = 0.5
WINDOW_MAX_S = 10.0
# Without CAP_SYS_RESOURCE (a root in a container, often) kernels from 6.5 take only windows that are a multiple of
# 2 s, and check them at the 2-s averaging period rather than 10 times a window: slower, but still a trigger.
UNPRIVILEGED_WINDOW_S = 2.0
# An urgent sample waits until its interval is at least this long: /proc/stat counts CPU time in ticks of 10 ms
# (USER_HZ 100), so over a shorter interval one tick is more than a tenth of a core and the rate says little.
MIN_INTERVAL_S = 0.1
# A rise worth following: a quarter of the VM's vCPUs more than its last sample used (a whole quarter core for a
# 1-vCPU VM, 2 cores for an 8-vCPU one), which a grow may soon have to meet; and the follow-up a quarter interval on.
RISE_SHARE = 0.25
FOLLOW_SHARE = 0.25


def rose(before_cores: float | None, used_cores: float, vcpus: int) -> bool:
    """Whether a VM's use rose enough since its last sample (``before_cores``; None: none) to follow it up."""
    return before_cores is not None and used_cores - before_cores >= RISE_SHARE * max(1, vcpus)


def follow_up_s(interval_s: float) -> float:
    """How long after a round that showed a rise its follow-up comes (never sooner than an interval measures)."""
    return max(MIN_INTERVAL_S, FOLLOW_SHARE * interval_s)


class TriggerSpec(msgspec.Struct, frozen=True):
    """A PSI trigger: fire when some task stalled ``stall_s`` seconds within any ``window_s`` (wall seconds, the
    kernel's; not the shared clock)."""

    stall_s: float
    window_s: float

    def __post_init__(self) -> None:
        if not WINDOW_MIN_S <= self.window_s <= WINDOW_MAX_S:
            raise ValueError(
                f"a PSI trigger's window must be from {WINDOW_MIN_S:g} to {WINDOW_MAX_S:g} s, got {self.window_s:g}"
            )
        if not 0 < self.stall_s <= self.window_s:
            raise ValueError(
                f"a PSI trigger's stall must be more than 0 and at most its window ({self.window_s:g} s), "
                f"got {self.stall_s:g}"
            )

    @property
    def stall_us(self) -> int:
        return max(1, round(self.stall_s * 1e6))

    @property
    def window_us(self) -> int:
        return round(self.window_s * 1e6)

    def text(self) -> str:
        """What the kernel reads: ``some 100000 1000000`` (microseconds)."""
        return f"some {self.stall_us} {self.window_us}"

    def payload(self) -> bytes:
        """The bytes to write: the text and a NUL, as psi.rst's example writes it, because the kernel overwrites the
        last byte written with a NUL (without one, ``1000000`` would be read as ``100000``: refused)."""
        return self.text().encode() + b"\0"

    def unprivileged(self) -> TriggerSpec | None:
        """The nearest trigger a process without CAP_SYS_RESOURCE may set: the window rounded up to a multiple of
        2 s, the stall scaled to the same share of it; None when this one is such a trigger already."""
        windows = self.window_us / (UNPRIVILEGED_WINDOW_S * 1e6)
        if windows == math.floor(windows):
            return None
        window = math.ceil(windows) * UNPRIVILEGED_WINDOW_S  # at most 10 s: the longest window is a multiple of 2 s
        return TriggerSpec(self.stall_s * window / self.window_s, window)


class UrgentGate:
    """When an urgent sample may go out: at most one per trigger window (the kernel limits a trigger's events to one a
    window already; this also holds against a wake-up the kernel did not mean), and not before its interval since
    the last sample is ``min_interval_s`` long."""

    def __init__(self, window_s: float, min_interval_s: float = MIN_INTERVAL_S) -> None:
        if window_s <= 0 or min_interval_s < 0:
            raise ValueError("an urgent gate needs a positive window and a non-negative least interval")
        self.window_s = window_s
        self.min_interval_s = min_interval_s
        self.last_urgent = -math.inf

    def delay(self, now: float, last_sample: float) -> float | None:
        """Seconds to wait before reading the urgent sample, or None: refused (one went out within the window)."""
        if now - self.last_urgent < self.window_s:
            return None
        return max(0.0, last_sample + self.min_interval_s - now)

    def sent(self, at: float) -> None:
        """An urgent sample went out at ``at``: the next waits a window from then."""
        self.last_urgent = at
