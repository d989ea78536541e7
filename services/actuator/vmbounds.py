"""Each VM's bounds on the actuator: ``--vm-bounds`` for that VM, else its ``[[vm]]`` rule's (a bound the rule
leaves out keeps the actuator's own), else the actuator's ``--min-vcpus``/``--max-vcpus``. Memory bounds come from the
``[[vm]]`` rule's ``min_memory``/``max_memory`` only (none: the hypervisor's limits). Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.actuator.checks import Bounds
from shared.config.rules import first_match, rule_bounds
from shared.config.schema import VmRule


def bounds_for(
    host: str, vm: str, default: Bounds, rules: Sequence[VmRule] = (), explicit: Mapping[str, Bounds] | None = None
) -> Bounds:
    if explicit and vm in explicit:
        return explicit[vm]
    index = first_match(rules, host, vm)
    if index is None:
        return default
    rule = rules[index]
    low, high = rule_bounds(rule, default.min_vcpus, default.max_vcpus)
    return Bounds(
        default.min_vcpus if low is None else low,
        default.max_vcpus if high is None else high,
        min_memory_bytes=rule.min_memory_bytes,
        max_memory_bytes=rule.max_memory_bytes,
    )
