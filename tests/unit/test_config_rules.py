"""``[[vm]]`` rules: glob matching on VM and HOST/VM, first match wins, and the settings a rule resolves to."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.config.rules import (
    DEFAULT_RULE,
    Defaults,
    first_match,
    merge_params,
    narrow,
    pattern_matches,
    resolve,
    rule_name,
)
from shared.config.schema import VmRule


def test_a_pattern_without_a_slash_matches_the_vm_on_any_host() -> None:
    assert pattern_matches("vm-0*", "node1", "vm-01")
    assert pattern_matches("vm-0*", "node2", "vm-09")
    assert not pattern_matches("vm-0*", "node1", "vm-10")
    assert not pattern_matches("VM-0*", "node1", "vm-01")  # case-sensitive everywhere


def test_a_host_slash_vm_pattern_matches_both() -> None:
    assert pattern_matches("node1/vm-*", "node1", "vm-01")
    assert not pattern_matches("node1/vm-*", "node2", "vm-01")
    assert pattern_matches("node[12]/db-?", "node2", "db-a")
    assert pattern_matches("*/vm-01", "anywhere", "vm-01")


def test_the_first_matching_rule_wins() -> None:
    rules = [VmRule(match="vm-01", autoscale="off"), VmRule(match="vm-*", max_vcpus=4), VmRule(match="*")]
    assert first_match(rules, "h", "vm-01") == 0
    assert first_match(rules, "h", "vm-02") == 1
    assert first_match(rules, "h", "db") == 2
    assert first_match(rules[:2], "h", "db") is None


def test_a_list_of_patterns_matches_any_of_them() -> None:
    rule = VmRule(match=["vm-01", "other/vm-02"])
    assert first_match([rule], "h", "vm-01") == 0
    assert first_match([rule], "other", "vm-02") == 0
    assert first_match([rule], "h", "vm-02") is None
    assert rule_name(rule) == "vm-01,other/vm-02"
    assert rule_name(VmRule(match="x", name="databases")) == "databases"


def test_a_vm_no_rule_matches_runs_under_the_defaults() -> None:
    defaults = Defaults("threshold", {"threshold": {"upper": 0.9}}, 1, 32)
    settings = resolve([VmRule(match="db-*", autoscale="off")], "h", "vm-01", defaults)
    assert settings.rule == DEFAULT_RULE
    assert settings.rule_index is None
    assert settings.autoscale == "auto"
    assert (settings.policy, settings.params) == ("threshold", {"threshold": {"upper": 0.9}})
    assert (settings.min_vcpus, settings.max_vcpus) == (1, 32)


def test_a_rule_sets_what_it_names_and_keeps_the_rest() -> None:
    defaults = Defaults("threshold", {"threshold": {"upper": 0.9}, "guard": {"warmup_s": 0}}, 1, 32)
    only_bounds = resolve([VmRule(match="vm-*", max_vcpus=4)], "h", "vm-01", defaults)
    assert (only_bounds.min_vcpus, only_bounds.max_vcpus) == (1, 4)
    assert only_bounds.policy == "threshold"
    assert only_bounds.params == defaults.params
    assert only_bounds.rule == "vm-*"


def test_a_rules_policy_takes_its_own_parameters_and_the_services_guard() -> None:
    defaults = Defaults("threshold", {"threshold": {"upper": 0.9}, "guard": {"warmup_s": 0, "max_changes": 3}})
    rule = VmRule(match="vm-01", policy="hpa", param={"hpa": {"target": 0.5}, "guard": {"max_changes": 1}})
    settings = resolve([rule], "h", "vm-01", defaults)
    assert settings.policy == "hpa"
    # the service's threshold parameters do not follow the VM to hpa; its guard does, key by key under the rule's
    assert settings.params == {"guard": {"warmup_s": 0, "max_changes": 1}, "hpa": {"target": 0.5}}


def test_merge_keeps_a_scope_that_does_not_apply_so_the_registry_can_refuse_it() -> None:
    assert merge_params("hpa", {}, {"vpa": {"x": 1}}) == {"vpa": {"x": 1}}


def test_narrow_keeps_the_hypervisors_range_when_the_bounds_leave_nothing() -> None:
    settings = resolve([VmRule(match="*", min_vcpus=2, max_vcpus=4)], "h", "v", Defaults())
    assert narrow(1, 16, settings) == (2, 4)
    assert narrow(3, 16, settings) == (3, 4)
    assert narrow(6, 16, settings) == (6, 16)  # min 2..4 cannot hold a VM whose hypervisor says 6..16


names = st.text(alphabet="abvm-0123", min_size=1, max_size=6)
patterns = st.text(alphabet="abvm-0123*?", min_size=1, max_size=6)
rule_lists = st.lists(st.builds(VmRule, match=patterns, max_vcpus=st.integers(1, 64)), max_size=6)


@given(rule_lists, names, names)
def test_the_resolved_rule_is_the_first_that_matches(rules: list[VmRule], host: str, vm: str) -> None:
    index = first_match(rules, host, vm)
    matching = [i for i, rule in enumerate(rules) if any(pattern_matches(p, host, vm) for p in rule.patterns)]
    assert index == (matching[0] if matching else None)
    settings = resolve(rules, host, vm, Defaults(max_vcpus=99))
    assert settings.max_vcpus == (rules[index].max_vcpus if index is not None else 99)


@given(rule_lists, rule_lists, names, names)
def test_rules_added_at_the_end_never_move_a_vm_already_matched(
    rules: list[VmRule], more: list[VmRule], host: str, vm: str
) -> None:
    before = first_match(rules, host, vm)
    if before is not None:
        assert first_match(rules + more, host, vm) == before


@given(patterns, names, names)
def test_any_host_is_the_same_as_no_host(pattern: str, host: str, vm: str) -> None:
    assert pattern_matches(pattern, host, vm) == pattern_matches(f"*/{pattern}", host, vm)


@given(st.integers(1, 64), st.integers(1, 64), st.integers(1, 64), st.integers(1, 64))
def test_narrow_stays_within_the_hypervisors_range(low: int, span: int, lo: int, hi_span: int) -> None:
    high = low + span
    settings = resolve([VmRule(match="*", min_vcpus=lo, max_vcpus=lo + hi_span)], "h", "v", Defaults())
    new_low, new_high = narrow(low, high, settings)
    assert low <= new_low <= new_high <= high


@given(
    rule_min=st.none() | st.integers(1, 16),
    rule_max=st.none() | st.integers(1, 16),
    default_min=st.integers(1, 16),
    default_max=st.integers(1, 16),
)
def test_the_decider_and_the_actuator_read_a_rules_bounds_alike(
    rule_min: int | None, rule_max: int | None, default_min: int, default_max: int
) -> None:
    """What the decider may ask (settings_of) and what the actuator enforces (vmbounds) come from one rule, and
    always leave a size: a rule's maximum under the service's minimum is not a VM with no size."""
    from services.actuator.checks import Bounds
    from services.actuator.vmbounds import bounds_for
    from shared.config.rules import Defaults, settings_of

    default_max = max(default_min, default_max)
    if rule_min is not None and rule_max is not None:
        rule_max = max(rule_min, rule_max)
    rules = [VmRule(match="vm-1", min_vcpus=rule_min, max_vcpus=rule_max)]
    enforced = bounds_for("h", "vm-1", Bounds(default_min, default_max), rules)
    settings = settings_of(rules, 0, Defaults("default", min_vcpus=default_min, max_vcpus=default_max))
    assert (settings.min_vcpus, settings.max_vcpus) == (enforced.min_vcpus, enforced.max_vcpus)
    assert enforced.min_vcpus <= enforced.max_vcpus
    if rule_max is not None:
        assert enforced.max_vcpus == max(rule_max, enforced.min_vcpus)
