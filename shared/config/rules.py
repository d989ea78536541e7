"""``[[vm]]`` rules: which rule a VM falls under, and the settings it resolves to. Pure.

A pattern without ``/`` is a glob on the VM's name, on any host ("vm-0*"); ``HOST/VM`` globs both, the part
before the first ``/`` matching the host ("node1/vm-*", "*/db-?"). Matching is case-sensitive (``fnmatchcase``:
``*``, ``?``, ``[seq]``, ``[!seq]``). The first rule that matches is the VM's rule; a key the rule leaves out keeps
the service's default, and a VM that no rule matches runs under the defaults alone (its rule is ``default``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import NamedTuple

from shared.config.schema import Autoscale, Params, ParamValue, VmRule

# Parameters as given: the file's typed values, or --param's strings.
ParamsIn = Mapping[str, Mapping[str, ParamValue]]

DEFAULT_RULE = "default"


class Defaults(NamedTuple):
    """What a service uses for a VM that no rule sets otherwise."""

    policy: str = "default"
    params: ParamsIn = {}
    min_vcpus: int | None = None
    max_vcpus: int | None = None


class VmSettings(NamedTuple):
    """One VM's resolved settings: the rule it falls under (``rule_index`` None: no rule) and what that gives it."""

    rule: str
    rule_index: int | None
    autoscale: Autoscale
    policy: str
    params: Params
    min_vcpus: int | None
    max_vcpus: int | None
    # On a full host (shared.pool): served by priority, then in proportion to weight; preemptible VMs may be shrunk
    # to what they use for a higher priority.
    priority: int = 0
    weight: float = 1.0
    preemptible: bool = False
    # Memory bounds, bytes (None: the hypervisor's limits).
    min_memory_bytes: int | None = None
    max_memory_bytes: int | None = None


def pattern_matches(pattern: str, host: str, vm: str) -> bool:
    host_glob, slash, vm_glob = pattern.partition("/")
    if not slash:
        return fnmatchcase(vm, pattern)
    return fnmatchcase(host, host_glob) and fnmatchcase(vm, vm_glob)


def rule_matches(rule: VmRule, host: str, vm: str) -> bool:
    return any(pattern_matches(p, host, vm) for p in rule.patterns)


def first_match(rules: Sequence[VmRule], host: str, vm: str) -> int | None:
    """The index of the first rule that matches ``host``/``vm``, or None."""
    return next((i for i, rule in enumerate(rules) if rule_matches(rule, host, vm)), None)


def rule_name(rule: VmRule) -> str:
    """A rule's name in metrics and logs: its ``name``, else its patterns."""
    return rule.name if rule.name is not None else ",".join(rule.patterns)


def merge_params(policy: str, base: ParamsIn, over: ParamsIn) -> Params:
    """``over`` on top of ``base``, key by key, keeping only what applies to ``policy``: its own scope and
    ``guard`` from ``base`` (a service's parameters for another policy do not follow a VM to its rule's policy),
    and every scope of ``over`` (so the registry can refuse one that does not apply)."""
    merged = {scope: dict(keys) for scope, keys in base.items() if scope in (policy, "guard")}
    for scope, keys in over.items():
        merged[scope] = {**merged.get(scope, {}), **keys}
    return merged


def rule_bounds(rule: VmRule, low: int | None, high: int | None) -> tuple[int | None, int | None]:
    """A rule's bounds over the defaults ``low``/``high`` (None: none known). A bound the rule leaves out keeps the
    default, the minimum lowered to the rule's maximum if need be, so that the pair always leaves a size. The one
    rule for the decider (what it may ask) and the actuator (what it enforces)."""
    new_high = rule.max_vcpus if rule.max_vcpus is not None else high
    new_low = rule.min_vcpus if rule.min_vcpus is not None else low
    if rule.min_vcpus is None and new_low is not None and new_high is not None:
        new_low = min(new_low, new_high)
    if new_low is not None and new_high is not None:
        new_high = max(new_low, new_high)
    return new_low, new_high


def settings_of(rules: Sequence[VmRule], index: int | None, defaults: Defaults) -> VmSettings:
    """The settings rule ``index`` (None: no rule) gives a VM, over ``defaults``."""
    if index is None:
        return VmSettings(
            DEFAULT_RULE,
            None,
            "auto",
            defaults.policy,
            merge_params(defaults.policy, defaults.params, {}),
            defaults.min_vcpus,
            defaults.max_vcpus,
        )
    rule = rules[index]
    policy = rule.policy if rule.policy is not None else defaults.policy
    low, high = rule_bounds(rule, defaults.min_vcpus, defaults.max_vcpus)
    return VmSettings(
        rule=rule_name(rule),
        rule_index=index,
        autoscale=rule.autoscale,
        policy=policy,
        params=merge_params(policy, defaults.params, rule.param),
        min_vcpus=low,
        max_vcpus=high,
        priority=rule.priority,
        weight=rule.weight,
        preemptible=rule.preemptible,
        min_memory_bytes=rule.min_memory_bytes,
        max_memory_bytes=rule.max_memory_bytes,
    )


def resolve(rules: Sequence[VmRule], host: str, vm: str, defaults: Defaults) -> VmSettings:
    """The settings of ``host``/``vm``: its first matching rule's, over ``defaults``."""
    return settings_of(rules, first_match(rules, host, vm), defaults)


def narrow(low: int, high: int, settings: VmSettings) -> tuple[int, int]:
    """The sizes ``[low, high]`` (the hypervisor's) within the VM's own bounds. Bounds that leave no size at all
    (a rule's minimum above the VM's maximum) are not applied: the VM's own range stands."""
    new_low = max(low, settings.min_vcpus) if settings.min_vcpus is not None else low
    new_high = min(high, settings.max_vcpus) if settings.max_vcpus is not None else high
    return (new_low, new_high) if new_low <= new_high else (low, high)
