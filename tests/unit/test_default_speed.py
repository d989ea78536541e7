"""The ``default`` policy's shortcuts (a window-size table shared by VMs, prices of distinct sizes only, the change
term left out when no arm moved, one sum for arms that have always agreed, no minimum sought among arms of one cost,
no table for a VM of one size, reasons prepared at the start price, the need read off the first arm, the cheapest-size
walks of all memories in one call, the costs' fade kept while the interval is the same) give exactly what the plain
formulas give. The plain formulas are written out here as they were before the shortcuts. Pure; no sockets."""

from __future__ import annotations

import math
import random

import pytest

from services.decider.policies import default as default_module
from services.decider.policies.base import Observation, Recommendation
from services.decider.policies.default import (
    DefaultParams,
    DefaultPolicy,
    DefaultState,
    Memory,
    cheapest_size,
    cheapest_sizes,
)
from services.decider.registry import build_policy


def _plain_charge(
    costs: list[float], previous: list[int], before: list[int], demand: float, dt: float, price: float, change: float
) -> list[float]:
    fade = 0.5 ** (dt / default_module.ARM_COSTS_HALF_LIFE_S)
    before = before or previous
    out = list(costs)
    for i, r in enumerate(previous):
        c = dt * (r + (price * (demand - r) if demand > r else 0.0))
        moved = r - before[i]
        out[i] = fade * out[i] + c + change * (moved if moved >= 0 else -moved)
    return out


def _plain_cheapest(memory: Memory, price: float, low: int, high: int, current: int, hysteresis: float) -> int:
    excess, weight = memory.excess, memory.weight
    if weight <= 0:
        return current
    size = len(excess)

    def cost(a: int) -> float:
        return a * weight + price * (excess[a] if a < size else 0.0)

    start = min(max(current, low), high)
    best, best_cost = start, cost(start)
    if best > low and (c := cost(best - 1)) <= best_cost:
        best, best_cost = best - 1, c
        while best > low and (c := cost(best - 1)) <= best_cost:
            best, best_cost = best - 1, c
    else:
        while best < high and (c := cost(best + 1)) < best_cost:
            best, best_cost = best + 1, c
    if best < start and cost(start) - best_cost < hysteresis * weight:
        return start
    return best


def test_charging_is_bit_for_bit_the_plain_sum_whether_or_not_arms_moved() -> None:
    policy, _ = build_policy("default", {})
    assert isinstance(policy, DefaultPolicy)
    rng = random.Random(7)
    arms = len(policy.arms)
    for _ in range(4000):
        # One size for every arm, and one cost for every arm (arms that have always agreed), take a shorter way.
        previous = [rng.randint(1, 8) for _ in range(arms)] if rng.random() < 0.5 else [rng.randint(0, 8)] * arms
        before = rng.choice([[], list(previous), [r if rng.random() < 0.8 else rng.randint(1, 8) for r in previous]])
        costs = [rng.uniform(0, 1e6) for _ in range(arms)]
        if rng.random() < 0.5:
            costs = [rng.choice([costs[0], 0.0, -0.0])] * arms
            costs[-1] = rng.choice([costs[0], 0.0, -0.0])  # 0.0 == -0.0, but they may sum apart
        demand, dt = rng.choice([0.0, rng.uniform(0, 9)]), rng.choice([0.0, 1.0, 300.0, 301.0])
        price = rng.uniform(1, 5000)
        state = DefaultState(costs=list(costs), previous=previous, before=before)
        policy._charge(state, demand, dt, price)
        plain = _plain_charge(costs, previous, before, demand, dt, price, policy.params.change_cost_s)
        assert [c.hex() for c in state.costs] == [c.hex() for c in plain]


def test_the_cheapest_size_is_the_plain_walks() -> None:
    rng = random.Random(11)
    for _ in range(3000):
        length = rng.randint(0, 10)
        excess = sorted((rng.uniform(0, 50) for _ in range(length)), reverse=True)
        memory = Memory(weight=rng.choice([0.0, rng.uniform(0.1, 20)]), excess=excess)
        low = rng.randint(1, 3)
        high = rng.randint(low, 12)
        args = (memory, rng.uniform(1, 500), low, high, rng.randint(1, 12), rng.choice([0.0, 0.1, 0.5]))
        assert cheapest_size(*args) == _plain_cheapest(*args)


def test_the_cheapest_sizes_of_a_vms_memories_are_each_memorys_plain_walk() -> None:
    """cheapest_sizes walks all of a VM's memories in one call, appending to the sizes so far."""
    rng = random.Random(19)
    for _ in range(1000):
        memories = []
        for _ in range(rng.randint(0, 3)):
            excess = sorted((rng.uniform(0, 50) for _ in range(rng.randint(0, 10))), reverse=True)
            memories.append(Memory(weight=rng.choice([0.0, rng.uniform(0.1, 20)]), excess=excess))
        low = rng.randint(1, 3)
        high = rng.randint(low, 12)
        args = (rng.uniform(1, 500), low, high, rng.randint(1, 12), rng.choice([0.0, 0.1, 0.5]))
        sizes = [7, 1]
        cheapest_sizes(memories, *args, sizes)
        assert sizes == [7, 1] + [_plain_cheapest(m, *args) for m in memories]


def _plain_choose(costs: list[float], chosen: int, change: float) -> int:
    cheapest = min(costs)
    if chosen < 0 or cheapest < costs[chosen] - change:
        return max(i for i, c in enumerate(costs) if c <= cheapest)
    return chosen


def test_the_arm_chosen_is_the_plain_minimum_for_one_cost_shared_or_many() -> None:
    """One float object for every arm (as _charge's one price for all leaves them) skips min: the same arm."""
    policy, _ = build_policy("default", {})
    assert isinstance(policy, DefaultPolicy)
    rng = random.Random(13)
    arms = len(policy.arms)
    for _ in range(3000):
        shared = rng.choice([0.0, -0.0, rng.uniform(0, 1e6), math.inf])
        costs = rng.choice(
            [
                [shared] * arms,  # one object
                [float(str(shared)) for _ in range(arms)],  # equal, distinct objects
                [shared] * (arms - 1) + [rng.choice([0.0, -0.0, shared + 1.0, shared - 1.0])],
                [rng.uniform(0, 1e6) for _ in range(arms)],
            ]
        )
        chosen = rng.randint(-1, arms - 1)
        state = DefaultState(costs=list(costs), chosen=chosen)
        assert policy._choose(state) == _plain_choose(costs, chosen, policy.params.change_cost_s)


def test_a_vm_of_one_size_is_given_what_the_window_table_and_the_cheapest_size_would_give() -> None:
    """A range of one size skips the table and cheapest_size: the sizes are theirs, a memory without weight included
    (it keeps the vCPUs the VM has, even outside its range)."""
    policy, _ = build_policy("default", {})
    assert isinstance(policy, DefaultPolicy)
    rng = random.Random(17)
    for size in (1, 3):
        state = DefaultState()
        for i, wanted in enumerate(_series(rng, 500)):
            vcpus = rng.choice([size, size, size + 2])
            obs = Observation(
                time=i * 60.0,
                vcpus=vcpus,
                min_vcpus=size,
                max_vcpus=size,
                used_cores=min(wanted, float(vcpus)),
                interval_s=0.0 if i < 3 else 60.0,  # memories without weight at first
            )
            demand, _ = policy.demand_of(obs)
            if not state.costs:
                policy.recommend(state, obs)  # the state's windows and memories made
                continue
            policy._remember(state, obs.time, demand, obs.interval_s, size)
            sizes = policy._arm_sizes(state, obs, demand, 50.0)
            plain = [r for q in state.peaks for r in policy._window_sizes(q[0][1], vcpus, size, size)]
            plain += [cheapest_size(m, 50.0, size, size, vcpus, policy.params.hysteresis) for m in state.memories]
            assert sizes == plain


def _series(rng: random.Random, steps: int) -> list[float]:
    level, out = rng.uniform(0, 3), []
    for _ in range(steps):
        level = max(0.0, level + rng.gauss(0, 0.4)) if rng.random() < 0.9 else rng.uniform(0, 8)
        out.append(level)
    return out


def _drive(policy: DefaultPolicy, vms: list[tuple[int, int, list[float]]]) -> list[list[Recommendation]]:
    """Every VM's recommendations, the VMs' steps interleaved as a decider serving them all takes them."""
    states = [DefaultState() for _ in vms]
    sizes = [high for _, high, _ in vms]
    out: list[list[Recommendation]] = [[] for _ in vms]
    for i in range(max(len(d) for _, _, d in vms)):
        for v, (low, high, demand) in enumerate(vms):
            if i >= len(demand):
                continue
            used = min(demand[i], float(sizes[v]))
            obs = Observation(
                time=i * 60.0, vcpus=sizes[v], min_vcpus=low, max_vcpus=high, used_cores=used, interval_s=60.0
            )
            rec = policy.recommend(states[v], obs)
            out[v].append(rec)
            sizes[v] = rec.target
    return out


@pytest.mark.parametrize("memo_size", [2, default_module.WINDOW_MEMO_SIZE])
def test_a_policy_serving_many_vms_tells_each_what_a_policy_of_its_own_would(
    monkeypatch: pytest.MonkeyPatch, memo_size: int
) -> None:
    """The window-size table (and the reasons' texts) are shared by every VM a policy serves and emptied when full:
    they must key on all the sizes depend on (vCPUs, bounds), so that no VM is given another's sizes."""
    rng = random.Random(3)
    vms = [(rng.randint(1, 2), rng.choice([2, 4, 8]), _series(rng, 400)) for _ in range(6)]
    params = {"default": {"target_unmet_pct": "0.5", "feedback_gain": "1"}}
    alone = []
    for vm in vms:
        policy, _ = build_policy("default", params)
        assert isinstance(policy, DefaultPolicy)
        alone.append(_drive(policy, [vm])[0])
    monkeypatch.setattr(default_module, "WINDOW_MEMO_SIZE", memo_size)
    monkeypatch.setattr(default_module, "REASONS_SIZE", memo_size)
    shared, _ = build_policy("default", params)
    assert isinstance(shared, DefaultPolicy)
    assert _drive(shared, vms) == alone
    assert sum(len(table) for table in shared._window_memo.values()) == shared._window_memo_entries <= memo_size
    assert len(shared._reasons) <= memo_size


def test_a_reason_names_the_price_it_was_chosen_at_with_or_without_feedback() -> None:
    for gain in ("0", "2"):
        policy, _ = build_policy("default", {"default": {"target_unmet_pct": "0.25", "feedback_gain": gain}})
        assert isinstance(policy, DefaultPolicy)
        state = DefaultState()
        prices = set()
        for i, wanted in enumerate([4.0] * 30 + [0.5] * 30):
            obs = Observation(
                time=i * 300.0, vcpus=2, min_vcpus=1, max_vcpus=8, used_cores=min(wanted, 2.0), interval_s=300.0
            )
            rec = policy.recommend(state, obs)
            price = math.exp(state.log_price) if state.log_price is not None else policy._start_price
            prefix = "saturated; " if wanted >= 2 else ""
            assert rec.reason.startswith(f"{prefix}{policy.arms[state.chosen]} with unmet demand priced {price:.0f}x")
            prices.add(f"{price:.0f}")
        assert len(prices) == 1 if gain == "0" else len(prices) > 1  # feedback moves the price, and the text


def test_the_need_is_the_first_arms_size_when_that_arm_is_the_shortest_window_x1() -> None:
    policy, _ = build_policy("default", {})
    assert isinstance(policy, DefaultPolicy)
    assert policy._need_is_first_arm
    rng = random.Random(5)
    state, vcpus = DefaultState(), 4
    for i, wanted in enumerate(_series(rng, 3000)):
        obs = Observation(
            time=i * 60.0, vcpus=vcpus, min_vcpus=1, max_vcpus=8, used_cores=min(wanted, float(vcpus)), interval_s=60.0
        )
        rec = policy.recommend(state, obs)
        assert rec.need == policy._need(state, obs, policy.demand_of(obs)[0])
        vcpus = rec.target
    assert not DefaultPolicy(DefaultParams(need_window_s=60.0))._need_is_first_arm
    assert not DefaultPolicy(DefaultParams(multipliers=(1.15, 2.0)))._need_is_first_arm
