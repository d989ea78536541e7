"""Each VM's bounds on the actuator: ``--vm-bounds`` for that VM, else its ``[[vm]]`` rule's (a bound the rule
leaves out keeps the actuator's own), else the actuator's ``--min-vcpus``/``--max-vcpus``. Pure."""

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
    low, high = rule_bounds(rules[index], default.min_vcpus, default.max_vcpus)
    return Bounds(default.min_vcpus if low is None else low, default.max_vcpus if high is None else high)
