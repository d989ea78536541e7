"""Turn two consecutive readings of one VM into a MetricSample: pure arithmetic on counter deltas."""

from __future__ import annotations

from services.collector.sources.base import MemoryCounters, Reading
from shared.messages import MemoryReading, MetricSample

MAX_CORES = 4096.0
MAX_BYTES = 64 * 1024**4  # the contract's bound on a size (shared.messages.Bytes)


def _clamp(x: float, low: float, high: float) -> float:
    return low if x < low else high if x > high else x


def sample_from(previous: Reading, current: Reading, host: str, source: str) -> MetricSample | None:
    """The sample for the interval between two readings, or None when they do not make an interval."""
    dt = current.time - previous.time
    if dt <= 0 or current.vm != previous.vm:
        return None
    used = _clamp((current.cpu_seconds - previous.cpu_seconds) / dt, 0.0, MAX_CORES)
    per_vcpu: list[float] | None = None
    if current.per_vcpu_seconds is not None and previous.per_vcpu_seconds is not None:
        before = previous.per_vcpu_seconds
        per_vcpu = [
            _clamp((seconds - before[key]) / dt, 0.0, 1.0)
            for key, seconds in sorted(current.per_vcpu_seconds.items())
            if key in before
        ][:1024]
    pressure = None
    if current.waiting_core_seconds is not None and previous.waiting_core_seconds is not None:
        pressure = _clamp((current.waiting_core_seconds - previous.waiting_core_seconds) / dt, 0.0, MAX_CORES)
    psi = None
    if current.psi_some_seconds is not None and previous.psi_some_seconds is not None:
        psi = _clamp((current.psi_some_seconds - previous.psi_some_seconds) / dt, 0.0, 1.0)
    return MetricSample(
        time=current.time,
        host=host,
        vm=current.vm,
        online_vcpus=current.online_vcpus,
        min_vcpus=current.min_vcpus,
        max_vcpus=current.max_vcpus,
        cpu_used_cores=used,
        interval_s=min(dt, 3600.0),
        source=source,
        per_vcpu_busy=per_vcpu,
        pressure_cores=pressure,
        psi_some=psi,
        memory=None if current.memory is None else memory_from(previous.memory, current.memory, dt),
    )


def _size(value: int | None) -> int | None:
    return None if value is None else int(_clamp(value, 0, MAX_BYTES))


def _rate(before: float | None, after: float | None, dt: float, high: float) -> float | None:
    """A counter's rate over ``dt``; None when either end is unknown or the counter went back (a restarted guest)."""
    if before is None or after is None or after < before:
        return None
    return _clamp((after - before) / dt, 0.0, high)


def memory_from(previous: MemoryCounters | None, current: MemoryCounters, dt: float) -> MemoryReading:
    """The memory part of a sample: sizes as ``current`` has them, rates over the interval from ``previous``."""
    swapped = previous.swap_in_bytes if previous is not None else None
    stalled = previous.psi_some_seconds if previous is not None else None
    return MemoryReading(
        size_bytes=int(_clamp(current.size_bytes, 0, MAX_BYTES)),
        min_bytes=int(_clamp(current.min_bytes, 0, MAX_BYTES)),
        max_bytes=int(_clamp(current.max_bytes, 0, MAX_BYTES)),
        used_bytes=_size(current.used_bytes),
        available_bytes=_size(current.available_bytes),
        swap_in_bytes_per_s=_rate(swapped, current.swap_in_bytes, dt, float(MAX_BYTES)),
        psi_some=_rate(stalled, current.psi_some_seconds, dt, 1.0),
        oom_kills=None if current.oom_kills is None else max(0, current.oom_kills),
    )
