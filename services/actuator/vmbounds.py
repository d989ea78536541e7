"""Each VM's bounds on the actuator: ``--vm-bounds`` for that VM, else its ``[[vm]]`` rule's (a bound the rule
leaves out keeps the actuator's own), else the actuator's ``--min-vcpus``/``--max-vcpus``. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.actuator.checks import Bounds
from shared.config.rules import first_match
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
    high = rule.max_vcpus if rule.max_vcpus is not None else default.max_vcpus
    low = rule.min_vcpus if rule.min_vcpus is not None else min(default.min_vcpus, high)
    return Bounds(low, max(low, high))
