"""The decider on urgent samples (sent at once on a pressure trigger): a grow the policy proposes on one goes out at
once where the rails allow; no shrink is ordered on one (reclaims included), so the next regular sample shrinks as it
would have; the host's planner keeps the VM's regular cadence; the live path carries the mark to the engine. Pure."""

from __future__ import annotations

import msgspec

from services.decider.engine import Limit, VmEngine
from services.decider.policies.base import Observation
from services.decider.pool import Claim, HostPlanner, HostView, claim_of
from services.decider.registry import build_policy, parse_params
from services.decider.rulebook import VmPlan
from services.decider.service import observation_of
from shared.config.rules import VmSettings
from shared.messages import MetricSample


def engine(policy: str, *params: str) -> VmEngine:
    return VmEngine(*build_policy(policy, parse_params(list(params))))


def obs(t: float, vcpus: int, used: float, *, pressure: float | None = None, interval: float = 1.0) -> Observation:
    return Observation(
        time=t, vcpus=vcpus, min_vcpus=1, max_vcpus=8, used_cores=used, interval_s=interval, pressure_cores=pressure
    )


def urgent(o: Observation) -> Observation:
    return msgspec.structs.replace(o, urgent=True)


def test_a_grow_on_an_urgent_sample_goes_out_at_once_and_the_next_regular_sample_waits_for_it() -> None:
    """``default`` grows on the sample that shows more demand; the urgent one shows it a regular interval sooner."""
    vm = engine("default", "guard.warmup_s=0")
    for t in range(1, 6):
        assert vm.step(obs(t, 2, 1.5, pressure=0.0)) is None
    burst = urgent(obs(6.3, 2, 2.0, pressure=1.5, interval=0.3))  # the load stepped up; the trigger fired
    grow = vm.step(burst)
    assert grow is not None and grow.target > 2 and grow.kind == "grow"
    vm.mark_sent(grow.target, until=36.3, time=6.3)
    assert vm.step(obs(7, 2, 2.0, pressure=1.5, interval=0.7)) is None  # the order is in flight


def test_the_same_urgent_sample_gives_the_same_grow_as_a_regular_one() -> None:
    """The mark adds no grow of its own: what goes out is the policy's, through the same rails."""
    history = [obs(t, 2, 1.5, pressure=0.0) for t in range(1, 6)]
    burst = obs(6.3, 2, 2.0, pressure=1.5, interval=0.3)
    plain, marked = engine("default", "guard.warmup_s=0"), engine("default", "guard.warmup_s=0")
    for o in history:
        plain.step(o)
        marked.step(o)
    assert marked.step(urgent(burst)) == plain.step(burst) is not None


def test_no_shrink_on_an_urgent_sample_and_the_next_regular_sample_shrinks() -> None:
    policy = ("threshold", "threshold.sustain_s=0", "guard.down_cooldown_s=0", "guard.warmup_s=0")
    calm = obs(10.2, 4, 0.2, interval=0.2)  # 5 %: the threshold rule wants one vCPU fewer
    regular = engine(*policy)
    shrink = regular.step(calm)
    assert shrink is not None and shrink.target == 3
    marked = engine(*policy)
    assert marked.step(urgent(calm)) is None
    assert marked.held is None  # nothing waits on it: the regular samples decide shrinks
    later = marked.step(obs(11, 4, 0.2, interval=0.8))
    assert later is not None and later.target == 3


def test_no_reclaim_on_an_urgent_sample() -> None:
    calm = obs(1, 6, 3.0)  # 50 %: the policy holds; the host takes two vCPUs back
    reclaimed = engine("threshold", "threshold.sustain_s=0", "guard.warmup_s=0").step(calm, limit=Limit(4, "full"))
    assert reclaimed is not None and reclaimed.kind == "reclaim"
    marked = engine("threshold", "threshold.sustain_s=0", "guard.warmup_s=0")
    assert marked.step(urgent(calm), limit=Limit(4, "full")) is None


def test_an_urgent_grow_keeps_within_the_rails() -> None:
    """Where the rails do not allow, it waits as any grow: here the up cooldown of the threshold rule."""
    vm = engine("threshold", "threshold.sustain_s=0", "guard.up_cooldown_s=10", "guard.warmup_s=0")
    first = vm.step(obs(1, 2, 1.9))
    assert first is not None and first.target == 3
    vm.mark_sent(3, until=2.0, time=1.0)
    assert vm.step(urgent(obs(2.5, 3, 2.9, interval=0.5))) is None  # took effect; up cooldown until 11


def test_the_planner_keeps_the_regular_cadence_after_an_urgent_claim() -> None:
    """An urgent sample's interval is the part since the last sample: were it taken as the VM's cadence, the VM
    would count as gone (five intervals without a sample) before its next regular sample."""
    host = HostPlanner(HostView(8, 4, 8, None))
    host.claim(Claim("a", 4, 1, 4, 4, interval_s=10.0, time=0.0), 0.0)
    host.claim(Claim("a", 4, 1, 4, 4, interval_s=0.1, time=0.1, urgent=True), 0.1)
    assert host.vms["a"].claim.interval_s == 10.0
    host.observe_host(HostView(8, 4, 8, None), 5.0)  # 4.9 s after the urgent claim: more than 5 x 0.1 s
    assert "a" in host.vms


def test_the_live_path_carries_the_mark_to_the_engine() -> None:
    sample = MetricSample(
        time=5.0, host="h", vm="v", online_vcpus=2, min_vcpus=1, max_vcpus=8, cpu_used_cores=2.0,
        interval_s=0.3, source="agent", pressure_cores=1.0, urgent=True,
    )  # fmt: skip
    seen = observation_of(sample)
    assert seen.urgent
    settings = VmSettings("r", 0, "auto", "default", {}, 2, 4)
    vm = engine("default", "guard.warmup_s=0")
    narrowed = VmPlan(settings, vm.policy, vm.rails).observe(seen)  # a rule's bounds rebuild the observation
    assert narrowed.urgent and (narrowed.min_vcpus, narrowed.max_vcpus) == (2, 4)
    proposal = vm.propose(narrowed)
    assert proposal is not None
    assert claim_of("v", proposal, settings, None).urgent
    assert not observation_of(msgspec.structs.replace(sample, urgent=False)).urgent
