"""Turn a host reading (and the one before it) into the HostState the collector publishes. Pure.

Capacity is ``shared.pool.host_capacity`` of the config's ``[[host]]`` rules, the one rule collector, decider and
actuator share; committed is the online vCPUs of every running VM; host wait is a rate over the two readings. Where
the source reports the host's memory, its memory capacity (``shared.pool.memory_capacity``) and committed memory
(every running VM's) too; else the memory fields stay None. Every
number is kept within the message's bounds, so what the source reports can never make the message invalid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.collector.sources.base import HostReading
from shared.config.schema import HostRule
from shared.messages import HostState
from shared.pool import host_capacity, memory_capacity
from shared.units import MAX_MEMORY_BYTES

MAX_CPUS = 65_536
MAX_VCPUS = 1_048_576
MAX_CORES = 4096.0


def _clamp(x: float, low: float, high: float) -> float:
    return low if x < low else high if x > high else x


def _rate(before: Mapping[str, float], after: Mapping[str, float], dt: float) -> float:
    """Core-seconds per second over the keys present in both readings; a counter that went back (a restarted
    thread) adds nothing rather than a negative share."""
    gained = sum(max(0.0, seconds - before[key]) for key, seconds in after.items() if key in before)
    return _clamp(gained / dt, 0.0, MAX_CORES)


def host_wait_cores(previous: HostReading | None, current: HostReading) -> float | None:
    """Cores' worth of vCPUs that waited for a host core between the two readings; None where unknown."""
    if previous is None or previous.host_wait_seconds is None or current.host_wait_seconds is None:
        return None
    dt = current.time - previous.time
    return _rate(previous.host_wait_seconds, current.host_wait_seconds, dt) if dt > 0 else None


def host_state(
    previous: HostReading | None,
    current: HostReading,
    *,
    host: str,
    rules: Sequence[HostRule],
    used_cores: float | None,
    source: str,
) -> HostState:
    """The HostState of ``host`` at ``current.time``: ``used_cores`` is what its VMs used over the interval (the
    collector's samples), ``previous`` the reading before (None at the first: host wait unknown)."""
    capacity = host_capacity(rules, host, int(_clamp(current.cpus, 1, MAX_CPUS)))
    cap = int(_clamp(capacity.capacity_vcpus, 0, MAX_VCPUS))
    committed = int(_clamp(sum(max(0, n) for n in current.vms.values()), 0, MAX_VCPUS))
    waiting_vms = max(0, current.waiting_vms)
    return HostState(
        time=current.time,
        host=host,
        cpus=int(_clamp(capacity.cpus, 1, MAX_CPUS)),
        capacity_vcpus=cap,
        committed_vcpus=committed,
        free_vcpus=cap - committed,
        watermark=capacity.watermark,
        used_cores=None if used_cores is None else _clamp(used_cores, 0.0, MAX_CORES),
        host_wait_cores=host_wait_cores(previous, current),
        waiting_vms=waiting_vms,
        waiting_vcpus=max(0, current.waiting_vcpus),
        next_waiting_vcpus=current.next_waiting_vcpus
        if waiting_vms and current.next_waiting_vcpus is not None and current.next_waiting_vcpus >= 1
        else None,
        source=source,
        **_memory_fields(current, host, rules),
    )


def _memory_fields(current: HostReading, host: str, rules: Sequence[HostRule]) -> dict[str, int]:
    """The HostState's memory fields from ``current`` (none when the source reports no memory: a rule's ``memory``
    alone does not tell what the VMs hold), each within the message's bounds."""
    if current.memory_bytes is None or current.vm_memory is None:
        return {}
    capacity = memory_capacity(rules, host, current.memory_bytes)
    if capacity is None:
        return {}
    committed = sum(max(0, size) for size in current.vm_memory.values())
    return {
        "memory_bytes": min(capacity.memory_bytes, MAX_MEMORY_BYTES),
        "capacity_memory_bytes": min(capacity.capacity_bytes, MAX_MEMORY_BYTES),
        "committed_memory_bytes": min(committed, MAX_MEMORY_BYTES),
    }
