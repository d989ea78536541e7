"""Per-VM rules in the decider (one policy, mode and bounds per VM; a reload that keeps decision state) and in the
actuator (each VM's bounds), driven in process with stub contexts."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.actuator.checks import Bounds
from services.actuator.vmbounds import bounds_for
from services.decider.registry import build_policy, parse_params
from services.decider.rulebook import RuleBook, build_rulebook
from services.decider.service import Decider, DeciderConfig, DeciderMetrics
from shared.config.load import ConfigError, LoadedConfig, parse
from shared.config.schema import VmRule
from shared.messages import MetricSample, ScaleCommand
from tests.stubs import FixedClock, RecordingJetStream, StubContext, StubOptions

# The threshold rule with nothing in its way: it orders on every busy or idle sample.
FREE = [
    "threshold.sustain_s=1",
    "guard.up_cooldown_s=0",
    "guard.down_cooldown_s=0",
    "guard.warmup_s=0",
    "guard.max_changes=1000",
]

RULES = """\
[[vm]]
match = "frozen"
autoscale = "off"

[[vm]]
match = "watched"
autoscale = "recommend"

[[vm]]
name = "capped"
match = "h/capped-*"
max_vcpus = 5
param.guard.max_step_up = 4

[[vm]]
match = "scaled"
policy = "hpa"
"""


def loaded(text: str = RULES) -> LoadedConfig:
    return parse(text, Path("hotplug.toml"))


def book(text: str = RULES) -> RuleBook:
    return build_rulebook(loaded(text), "threshold", parse_params(FREE))


class Harness:
    def __init__(self, rules: RuleBook) -> None:
        policy, rails = build_policy("threshold", parse_params(FREE))
        self.clock = FixedClock(0.0)
        self.metrics = DeciderMetrics("decider")
        self.js = RecordingJetStream()
        ctx = StubContext(StubOptions(self.clock), self.metrics, self.js)
        self.decider = Decider(ctx, policy, rails, DeciderConfig(), rules)  # type: ignore[arg-type]

    def sample(self, vm: str, vcpus: int, used: float, t: float, hi: int = 8) -> ScaleCommand | None:
        self.clock.t = t
        return self.decider.handle_sample(
            MetricSample(
                time=t,
                host="h",
                vm=vm,
                online_vcpus=vcpus,
                min_vcpus=1,
                max_vcpus=hi,
                cpu_used_cores=used,
                interval_s=1.0,
                source="t",
            )
        )

    def decisions(self, mode: str) -> float:
        return sum(
            s.value
            for family in self.metrics.registry.collect()
            if family.name == "hotplug_decider_decisions"
            for s in family.samples
            if s.name.endswith("_total") and s.labels["mode"] == mode
        )

    def rule_info(self) -> set[tuple[str, ...]]:
        return {
            (s.labels["vm"], s.labels["rule"], s.labels["autoscale"], s.labels["policy"])
            for family in self.metrics.registry.collect()
            if family.name == "hotplug_decider_vm_rule_info"
            for s in family.samples
            if s.value == 1
        }


async def test_an_off_vm_is_never_decided_on_and_a_rule_free_vm_is() -> None:
    h = Harness(book())
    for t in range(1, 6):
        assert h.sample("frozen", 2, 2.0, float(t)) is None
    assert ("h", "frozen") not in h.decider.engines
    assert h.sample("free", 2, 2.0, 1.0) is not None  # the same load on a VM no rule matches: commanded


async def test_a_recommend_vm_is_decided_on_and_logged_but_never_commanded() -> None:
    h = Harness(book())
    for t in range(1, 6):
        assert h.sample("watched", 2, 2.0, float(t)) is None
    assert h.decisions("recommend") == 5
    assert h.decisions("command") == 0
    assert h.decider.engines[("h", "watched")].pending_target is None
    assert h.js.published == []


async def test_each_vm_runs_its_rules_policy() -> None:
    h = Harness(book())
    h.sample("scaled", 2, 2.0, 1.0)
    h.sample("free", 2, 2.0, 1.0)
    assert h.decider.engines[("h", "scaled")].policy.name == "hpa"
    assert h.decider.engines[("h", "free")].policy.name == "threshold"


async def test_a_rules_max_vcpus_caps_what_the_decider_asks_for() -> None:
    h = Harness(book())
    command = h.sample("capped-1", 4, 4.0, 1.0, hi=16)
    assert command is not None
    assert command.target_vcpus == 5
    h.decider.engines[("h", "capped-1")].mark_done()
    # every vCPU busy at the rule's maximum: the hypervisor's 16 would allow more, the rule does not
    assert h.sample("capped-1", 5, 5.0, 2.0, hi=16) is None
    assert h.sample("free-1", 5, 5.0, 2.0, hi=16) is not None


async def test_the_rule_each_vm_runs_under_is_a_metric() -> None:
    h = Harness(book())
    for vm in ("frozen", "watched", "capped-1", "free"):
        h.sample(vm, 2, 0.5, 1.0)
    assert h.rule_info() == {
        ("frozen", "frozen", "off", "threshold"),
        ("watched", "watched", "recommend", "threshold"),
        ("capped-1", "capped", "auto", "threshold"),
        ("free", "default", "auto", "threshold"),
    }


async def test_a_reload_keeps_each_vms_engine_and_its_state_and_says_who_starts_afresh() -> None:
    h = Harness(book())
    for t in (1.0, 2.0):
        h.sample("capped-1", 2, 0.5, t)
        h.sample("scaled", 2, 0.5, t)
    capped, scaled = h.decider.engines[("h", "capped-1")], h.decider.engines[("h", "scaled")]
    capped_state, capped_first_seen = capped.policy_state, capped.guard.first_seen
    capped.mark_sent(3, until=100.0, command_id="c1")
    capped.learn_allowed(1, 5, now=2.0)  # what the actuator said under the old bound
    h.sample("free", 2, 0.5, 2.0)
    h.decider.engines[("h", "free")].learn_allowed(1, 8, now=2.0)

    changed = RULES.replace("max_vcpus = 5", "max_vcpus = 3").replace('policy = "hpa"', 'policy = "vpa"')
    summary = h.decider.use_rules(book(changed))

    assert h.decider.engines[("h", "capped-1")] is capped
    assert capped.policy_state is capped_state and capped.guard.first_seen == capped_first_seen
    assert capped.pending_target == 3  # an order in flight is still waited for
    assert capped.allowed is None  # its bounds moved: what an actuator allowed under the old ones is asked again
    assert h.decider.engines[("h", "free")].allowed is not None  # its bounds did not
    assert h.decider.plan("h", "capped-1").settings.max_vcpus == 3
    assert scaled.policy.name == "vpa"
    assert scaled.guard.first_seen is None  # a new policy warms up afresh
    assert "1 start a new policy afresh (scaled)" in summary
    assert ("scaled", "scaled", "auto", "vpa") in h.rule_info()
    assert ("scaled", "scaled", "auto", "hpa") not in h.rule_info()


async def test_a_reload_turning_a_vm_off_stops_its_commands() -> None:
    h = Harness(book())
    assert h.sample("free", 2, 2.0, 1.0) is not None
    h.decider.engines[("h", "free")].mark_done()
    h.decider.use_rules(book('[[vm]]\nmatch = "free"\nautoscale = "off"\n'))
    assert h.sample("free", 3, 3.0, 2.0) is None
    assert ("free", "free", "off", "threshold") in h.rule_info()


def test_a_rules_bad_policy_parameter_is_refused_at_its_line() -> None:
    text = '[[vm]]\nmatch = "a"\n\n[[vm]]\nmatch = "b"\npolicy = "hpa"\nparam.hpa.tagret = 0.5\n'
    with pytest.raises(ConfigError) as caught:
        book(text)
    assert caught.value.line == 7
    assert "vm[1].param" in caught.value.reason and "tagret" in caught.value.reason
    with pytest.raises(ConfigError) as unknown:
        book('[[vm]]\nmatch = "a"\npolicy = "magic"\n')
    assert unknown.value.line == 3
    assert "unknown policy" in unknown.value.reason
    with pytest.raises(ConfigError) as foreign:
        book('[[vm]]\nmatch = "a"\nparam.hpa.target = 0.5\n')  # hpa's parameter on the default threshold
    assert "do not apply" in foreign.value.reason


def test_actuator_bounds_come_from_the_flag_then_the_rule_then_its_own() -> None:
    rules = (VmRule(match="db-*", max_vcpus=4), VmRule(match="h2/*", min_vcpus=2))
    own = Bounds(1, 64)
    assert bounds_for("h", "db-1", own, rules) == Bounds(1, 4)
    assert bounds_for("h", "web", own, rules) == own
    assert bounds_for("h2", "web", own, rules) == Bounds(2, 64)
    assert bounds_for("h", "db-1", own, rules, {"db-1": Bounds(2, 2)}) == Bounds(2, 2)
    # a rule's max below the actuator's own min: the rule's word stands, and the bounds still hold a size
    assert bounds_for("h", "db-1", Bounds(8, 64), rules) == Bounds(4, 4)
