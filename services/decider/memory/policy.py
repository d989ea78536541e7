"""The memory rule: grow at once on pressure, swapping or a thin margin; shrink slowly, on a window of evidence,
keeping room for the largest rise between two samples it remembers.

Pure and incremental: ``MemoryPolicy.decide`` takes one sample and the VM's state (which it updates), owns no I/O and
no clock, and costs O(1) amortised (the window's maximum is a monotonic deque). It returns a new size, or None to
hold; a hold makes nothing, so a replay of millions of samples allocates only for the changes.

Sizes are bytes, always whole multiples of the device block (virtio-mem: 2 MiB) within the VM's bounds.
"""

from __future__ import annotations

import math

import msgspec

from services.decider.memory.settings import MemorySettings
from services.decider.memory.window import WindowMax
from shared.units import MIB, align_down, align_up, format_size

DEFAULT_STEP_BYTES = 2 * MIB  # virtio-mem's device block (docs/memory.md in ../shared)
# The windows' time buckets (services.decider.memory.window): at most this many entries per VM whatever the sampling
# rate; a window of 288 samples then has a bucket per sample, so a replay of it is exact.
WINDOW_BUCKETS = 288
# The weight of each sample's interval in the running mean that sets the window's span from ``window_samples``.
INTERVAL_SMOOTHING = 1 / 16
# A rise is measured over at least this share of the mean sampling interval: the reserve is what may come before the
# next regular sample shows it, and an urgent sample between two regular ones (a pressure trigger) would otherwise
# cut a burst's rise in two, each part remembered as the rise. A regular sample a little early still counts whole.
RISE_SPAN_SHARE = 0.75


class MemoryObservation(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One sample of one VM's memory. Untracked by the collector (numbers only, so in no reference cycle)."""

    time: float  # seconds, any origin, increasing from sample to sample
    size_bytes: int  # the guest's memory now (boot RAM + plugged)
    # MemTotal − MemAvailable, or a trace's usage; None: the guest's use is not known (then no shrink, and only
    # pressure or swapping grow).
    used_bytes: int | None
    min_bytes: int
    max_bytes: int
    step_bytes: int = DEFAULT_STEP_BYTES
    # MemAvailable when the guest reports it: the used memory is then at least size − available.
    available_bytes: int | None = None
    # Bytes swapped in per second over the interval; None: not measured (not the same as 0).
    swap_in_bytes_per_s: float | None = None
    # PSI memory "some": the share of the interval in which some task stalled on memory; None: not measured.
    psi_some: float | None = None
    # Seconds since the previous sample; with the swap-in rate it tells how much did not fit. None: not known.
    interval_s: float | None = None
    # Sent at once on a pressure trigger, between the regular samples: it may grow, never shrink (shrinks wait for
    # the regular samples, as the vCPU engine's do).
    urgent: bool = False


class MemoryDecision(msgspec.Struct, frozen=True, gc=False):
    target_bytes: int
    reason: str  # for people: "grow: used 3.1GiB leaves 200MiB spare"
    kind: str  # for metrics, low cardinality: pressure, swapping, margin, shrink, bounds


class MemoryState:
    """One VM's running state: the windows of used memory and of its rises, and the times that gate a shrink."""

    __slots__ = ("calm_since", "interval_s", "last_change", "last_time", "last_used", "rises", "used_since", "window")

    def __init__(self, window_samples: int, rise_memory_s: float) -> None:
        # The span is the sampling interval times ``window_samples``, set from each sample's interval.
        self.window = WindowMax(0.0, 0.0)
        self.rises = WindowMax(rise_memory_s, rise_memory_s / WINDOW_BUCKETS)
        self.calm_since: float | None = None  # the first sample, or the last one under pressure or swapping
        self.last_change = -math.inf  # the time of the last decision this state returned
        self.last_time: float | None = None
        # The sample a rise is measured from (its used and time): the last that knew the use, at least most of a
        # sampling interval before (see ``RISE_SPAN_SHARE``).
        self.last_used: int | None = None
        self.used_since: float | None = None
        self.interval_s: float | None = None  # the running mean of the sampling interval


class MemoryPolicy:
    """The rule with its settings; one instance serves every VM, each with its own ``new_state()``."""

    name = "memory"

    def __init__(self, settings: MemorySettings | None = None) -> None:
        self.settings = settings or MemorySettings()
        s = self.settings
        self._pressure_scale = 1.0 + s.pressure_grow

    def new_state(self) -> MemoryState:
        return MemoryState(self.settings.window_samples, self.settings.rise_memory_s)

    def spare(self, used_bytes: int) -> float:
        """The headroom's spare above ``used_bytes``: its share of it plus the floor (docs/memory.md's ``spare(u)``)."""
        return used_bytes * self.settings.headroom + self.settings.floor_bytes

    def wanted(self, used_bytes: int, rise_bytes: int = 0) -> float:
        """The size asked for above ``used_bytes``: the headroom's spare, or ``rise_bytes`` (the largest rise from one
        sample to the next remembered) where that is more; before alignment and bounds."""
        spare = self.spare(used_bytes)
        return used_bytes + (spare if spare >= rise_bytes else rise_bytes)

    def grow_below(self, used_bytes: int, rise_bytes: int = 0) -> float:
        """The spare (size − used) under which the rule grows: ``grow_trigger`` of the headroom's spare, or the whole
        of ``rise_bytes`` where that is more.

        The trigger below the headroom's spare is a hysteresis for use that creeps up: that spare is never all needed
        before the next sample. The rise is not: it is what may come before the next sample shows it, and a burst
        longer than a sample goes on rising while the grow ordered on that sample lands. A grow at half the rise
        left a guest a burst ramping at the rise's own pace short by half a rise plus what came during the
        actuation, past its swap (the OOM kills of ``bench/memory_model.py --duration 43200``)."""
        trigger = self.settings.grow_trigger * self.spare(used_bytes)
        return trigger if trigger >= rise_bytes else float(rise_bytes)

    def grow_to(self, used_bytes: int, rise_bytes: int = 0) -> float:
        """The size a margin grow asks for: ``wanted``, and where the rise sets the trigger, the rise plus the band
        between the headroom's trigger and its spare, so a grow for the rise is not followed by another at every MiB
        that use creeps up (each is an actuation)."""
        spare = self.spare(used_bytes)
        band = (1.0 - self.settings.grow_trigger) * spare
        return used_bytes + max(spare, rise_bytes + band)

    def decide(self, state: MemoryState, obs: MemoryObservation) -> MemoryDecision | None:
        """A new size for the VM of ``obs``, or None to keep the size it has. Every decision returned is assumed
        made (it restarts the shrink interval); the next sample's ``size_bytes`` says what the VM really has."""
        s = self.settings
        now, size, step = obs.time, obs.size_bytes, obs.step_bytes
        low = align_up(obs.min_bytes, step)
        high = max(low, align_down(obs.max_bytes, step))
        used = obs.used_bytes
        if obs.available_bytes is not None and (used is None or size - obs.available_bytes > used):
            # The guest's MemAvailable may exceed the hypervisor's size while a change is under way: not below 0.
            used = max(0, size - obs.available_bytes)
        interval = obs.interval_s
        if interval is None and state.last_time is not None:
            interval = now - state.last_time
        if interval is not None and interval > 0:
            # A running mean, so one late or early sample barely moves the window: a window cut short by one quick
            # sample would forget its peak for good.
            mean = state.interval_s
            state.interval_s = interval if mean is None else mean + (interval - mean) * INTERVAL_SMOOTHING
            span = s.window_samples * state.interval_s
            state.window.span_s, state.window.resolution_s = span, span / WINDOW_BUCKETS
        state.last_time = now
        if used is not None:
            state.window.push(now, used)
            if state.last_used is not None:  # from a sample that knew it: samples between count as none
                state.rises.push(now, max(0, used - state.last_used))
            since = state.used_since
            mean = state.interval_s
            if since is None or mean is None or now - since >= RISE_SPAN_SHARE * mean:
                state.last_used, state.used_since = used, now
        rise = state.rises.max()
        swap_rate = obs.swap_in_bytes_per_s
        swapping = swap_rate is not None and swap_rate > s.swap_in_bytes_per_s
        pressed = obs.psi_some is not None and obs.psi_some > s.psi_some
        if swapping or pressed or used is None or state.calm_since is None:
            state.calm_since = now  # a shrink's evidence (a window of known use, no shortage) starts again

        if swapping or pressed:
            # Used is censored by the size once the guest swaps (and unknown use is taken as all of it): ask for
            # more than it shows, in one step. What was swapped in over the interval is what did not fit (more, if
            # the same page came back twice: the safe side), so it is added to used.
            base = size if used is None else used
            if swapping and swap_rate is not None and obs.interval_s is not None:
                base += int(swap_rate * obs.interval_s)
            target = _bounded(max(self.wanted(base, rise), size * self._pressure_scale), step, low, high)
            if target > size:
                kind = "swapping" if swapping else "pressure"
                what = (
                    f"{format_size(int(swap_rate or 0))}/s swapped in" if swapping else f"psi some {obs.psi_some:.0%}"
                )
                return self._made(state, now, target, f"grow: {what}", kind)
        elif used is not None and size - used < self.grow_below(used, rise):
            target = _bounded(self.grow_to(used, rise), step, low, high)
            if target > size:
                reason = f"grow: used {format_size(used)} leaves {format_size(max(0, size - used))} spare"
                return self._made(state, now, target, reason, "margin")

        # Bounds an operator moved come first, even under pressure: they are the operator's word on this VM.
        if size < low or size > high:
            return self._made(state, now, _bounded(size, step, low, high), "into the bounds", "bounds")
        if (
            swapping
            or pressed
            or obs.urgent
            or used is None
            or state.window.span_s <= 0
            or now - state.calm_since < state.window.span_s
            or now - state.last_change < s.shrink_interval_s
        ):
            return None
        # Never below the window's peak with its headroom, nor below what is used now with room for the largest
        # rise remembered (a burst that comes faster than a grow must find its memory there).
        peak = state.window.max()
        floor = _bounded(max(self.wanted(peak), self.wanted(used, rise)), step, low, high)
        if size - floor < s.min_shrink_fraction * size or floor >= size:
            return None
        target = max(floor, align_up(math.ceil(size * (1.0 - s.max_shrink_fraction)), step))
        if target >= size:
            return None
        reason = f"shrink: used at most {format_size(peak)} in {state.window.span_s:g} s"
        return self._made(state, now, target, reason, "shrink")

    @staticmethod
    def _made(state: MemoryState, now: float, target: int, reason: str, kind: str) -> MemoryDecision:
        state.last_change = now
        return MemoryDecision(target, reason, kind)


def _bounded(size: float, step: int, low: int, high: int) -> int:
    """``size`` rounded up to the device block, within ``low``..``high`` (both already multiples of it)."""
    aligned = align_up(math.ceil(size), step)
    return low if aligned < low else high if aligned > high else aligned
