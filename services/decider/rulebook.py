"""The decider's ``[[vm]]`` rules with each rule's policy built once by the registry (so a rule's policy and
parameters are checked exactly as ``--policy``/``--param`` are), and what each VM runs with. Pure.

A rule's policy error is reported at the rule's line in the file; the decider refuses to start with it, and a
reload that brings one is refused whole (the rules in force stay).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec

from services.decider.guard import GuardRails
from services.decider.policies.base import Observation, PolicyBase
from services.decider.registry import ParamError, build_policy
from shared.config.load import LoadedConfig
from shared.config.rules import Defaults, ParamsIn, VmSettings, first_match, narrow, settings_of
from shared.config.schema import VmRule


class VmPlan(NamedTuple):
    """What the decider runs one VM with: its settings (rule, autoscale mode, bounds) and its built policy."""

    settings: VmSettings
    policy: PolicyBase[Any, Any]
    rails: GuardRails

    def observe(self, obs: Observation) -> Observation:
        """The observation within the VM's own bounds: the policy and the guard never aim outside them."""
        low, high = narrow(obs.min_vcpus, obs.max_vcpus, self.settings)
        if (low, high) == (obs.min_vcpus, obs.max_vcpus):
            return obs
        return msgspec.structs.replace(obs, min_vcpus=low, max_vcpus=high)


class RuleBook:
    """The rules in file order with a plan per rule, and the plan of VMs that no rule matches."""

    def __init__(self, rules: Sequence[VmRule], plans: Sequence[VmPlan], default: VmPlan) -> None:
        self.rules = tuple(rules)
        self.plans = tuple(plans)
        self.default = default

    @classmethod
    def single(cls, policy: PolicyBase[Any, Any], rails: GuardRails) -> RuleBook:
        """No rules: every VM runs ``policy`` with ``rails``."""
        return cls((), (), VmPlan(settings_of((), None, Defaults(policy.name)), policy, rails))

    def plan(self, host: str, vm: str) -> VmPlan:
        index = first_match(self.rules, host, vm)
        return self.default if index is None else self.plans[index]


def build_rulebook(loaded: LoadedConfig | None, policy: str, params: ParamsIn) -> RuleBook:
    """The rule book of ``loaded`` (None: no rules) over the decider's own policy and parameters.

    Raises ``ParamError`` for the decider's own policy or parameters, and a line-located ``ConfigError`` for a
    rule's."""
    default_policy, default_rails = build_policy(policy, params)
    defaults = Defaults(policy, params)
    default = VmPlan(settings_of((), None, defaults), default_policy, default_rails)
    rules = loaded.config.vm if loaded is not None else []
    plans = []
    for index, rule in enumerate(rules):
        settings = settings_of(rules, index, defaults)
        try:
            built, rails = build_policy(settings.policy, settings.params)
        except ParamError as exc:
            assert loaded is not None
            key = "policy" if rule.policy is not None and "unknown policy" in str(exc) else "param"
            raise loaded.error(("vm", index, key), str(exc)) from None
        plans.append(VmPlan(settings, built, rails))
    return RuleBook(rules, plans, default)
