"""A host's capacity in vCPUs and in memory, and which ``[[host]]`` rule sets it. Pure.

Capacity is OpenStack Placement's: ``(cpus - reserve_cpus) × overcommit``, floored to whole vCPUs and never
negative; in memory ``(memory - reserve_memory) × memory_overcommit``, floored to bytes (:func:`memory_capacity`).
``cpus`` is what the host's source or driver reports (the simulator's host cores, libvirt's node info, the
machine's CPU count for QEMU, VirtualBox and psutil) unless its rule names another number. The collector
publishes it (HostState), the decider plans each host within it, and the actuator enforces it: all three read
it through :func:`host_capacity`, so they agree on one number. A host's memory is what its source or driver reports
unless its rule names another size; where neither knows it, the host's memory is not arbitrated (None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import NamedTuple

from shared.config.schema import HostRule

DEFAULT_RULE = HostRule(match="*")


class HostCapacity(NamedTuple):
    """A host's resolved capacity: what its rule (``rule_index`` None: no rule) makes of its CPUs."""

    cpus: int
    reserve_cpus: float
    overcommit: float
    watermark: float
    capacity_vcpus: int
    rule_index: int | None = None

    @property
    def insurance_vcpus(self) -> int:
        """The vCPUs that cores held against a burst (not in use now) may take: the watermark's share."""
        return insurance_of(self.capacity_vcpus, self.watermark)


def insurance_of(capacity_vcpus: int, watermark: float) -> int:
    """The watermark's share of ``capacity_vcpus``, whole (what a HostState's capacity and watermark allow)."""
    return math.floor(capacity_vcpus * watermark + 1e-9)


def host_rule(rules: Sequence[HostRule], host: str) -> int | None:
    """The index of the first ``[[host]]`` rule that matches ``host``, or None."""
    return next((i for i, rule in enumerate(rules) if any(fnmatchcase(host, p) for p in rule.patterns)), None)


def capacity_of(cpus: int, reserve_cpus: float, overcommit: float) -> int:
    """``(cpus - reserve_cpus) × overcommit`` whole vCPUs, never negative (a tiny epsilon keeps 3 × 1.0 at 3)."""
    return max(0, math.floor((cpus - reserve_cpus) * overcommit + 1e-9))


def host_capacity(rules: Sequence[HostRule], host: str, detected_cpus: int) -> HostCapacity:
    """The capacity of ``host`` whose source or driver reports ``detected_cpus`` CPUs, under its first rule."""
    index = host_rule(rules, host)
    rule = rules[index] if index is not None else DEFAULT_RULE
    cpus = rule.cpus if rule.cpus is not None else max(1, detected_cpus)
    return HostCapacity(
        cpus=cpus,
        reserve_cpus=rule.reserve_cpus,
        overcommit=rule.overcommit,
        watermark=rule.watermark,
        capacity_vcpus=capacity_of(cpus, rule.reserve_cpus, rule.overcommit),
        rule_index=index,
    )


class MemoryCapacity(NamedTuple):
    """A host's resolved memory capacity, in bytes: what its rule (``rule_index`` None: no rule) makes of its
    memory."""

    memory_bytes: int
    reserve_bytes: int
    overcommit: float
    capacity_bytes: int
    rule_index: int | None = None


def memory_capacity_of(memory_bytes: int, reserve_bytes: int, overcommit: float) -> int:
    """``(memory - reserve) × overcommit`` bytes, floored, never negative."""
    return max(0, math.floor((memory_bytes - reserve_bytes) * overcommit))


def memory_capacity(rules: Sequence[HostRule], host: str, detected_bytes: int | None) -> MemoryCapacity | None:
    """The memory capacity of ``host`` whose source or driver reports ``detected_bytes`` (None: it does not know),
    under its first rule; None when neither the rule nor the source gives the host's memory (not arbitrated)."""
    index = host_rule(rules, host)
    rule = rules[index] if index is not None else DEFAULT_RULE
    memory = rule.memory_bytes if rule.memory_bytes is not None else detected_bytes
    if memory is None or memory <= 0:
        return None
    reserve = rule.reserve_memory_bytes or 0
    return MemoryCapacity(
        memory_bytes=memory,
        reserve_bytes=reserve,
        overcommit=rule.memory_overcommit,
        capacity_bytes=memory_capacity_of(memory, reserve, rule.memory_overcommit),
        rule_index=index,
    )
