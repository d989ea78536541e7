"""Turn two consecutive readings of one VM into a MetricSample: pure arithmetic on counter deltas."""

from __future__ import annotations

from services.collector.sources.base import Reading
from shared.messages import MetricSample

MAX_CORES = 4096.0


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
    )
