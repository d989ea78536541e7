"""``default``: the policy we recommend. An Autopilot-style choice, per VM, among simple recommenders ("arms")
by what each would have cost on this VM recently.

Each arm recommends ``ceil(max(demand over its last w samples) × (1 + m))`` for one window ``w`` and one
margin ``m``. After every sample each arm is charged for the allocation it recommended one sample ago:
unmet cores (demand above it), ``idle_cost`` per idle core, and ``change_cost`` per vCPU it moved (hot-plug
is not free; Autopilot's limit-change term). Costs decay by ``memory`` per sample, and the cheapest arm
decides. So a steady VM settles on a short window and no margin, a bursty one on a long window or a margin,
and a VM that changes character changes arm within a few tens of samples. No constant is tuned per trace:
the one trade-off is ``idle_cost``, the price of an idle core relative to an unmet one.

Demand is what ran plus the pressure when the source reports it. Without pressure a saturated sample is
censored (demand ≥ vCPUs, by an unknown amount): arms that would not have allocated more than the VM had
are charged ``censored_shortfall`` cores, the expected demand hidden above the cap.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Annotated

import msgspec

from services.decider.policies.base import Observation, Params, PolicyBase, Recommendation


class DefaultParams(Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    idle_cost: Annotated[float, msgspec.Meta(gt=0)] = 0.1
    change_cost: Annotated[float, msgspec.Meta(ge=0)] = 0.1
    memory: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.95
    censored_shortfall: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    windows: tuple[int, ...] = (1, 2, 4, 8, 16)
    margins: tuple[float, ...] = (0.0, 0.25, 0.5)

    def __post_init__(self) -> None:
        if not self.windows or min(self.windows) < 1:
            raise ValueError("default.windows must be positive sample counts")
        if not self.margins or min(self.margins) < 0:
            raise ValueError("default.margins must be non-negative")


class DefaultState(msgspec.Struct):
    history: deque[float] = msgspec.field(default_factory=deque)
    costs: list[float] = msgspec.field(default_factory=list)
    previous: list[int] = msgspec.field(default_factory=list)  # each arm's recommendation one sample ago
    before: list[int] = msgspec.field(default_factory=list)  # ... and two samples ago
    chosen: int = 0
    vcpus: int = 0  # the allocation at the previous sample
    last_move: int = 0  # direction of the last change seen: +1 grown, -1 shrunk
    peak_since_move: float = 0.0  # highest demand (or the size, when censored) since that change


class DefaultPolicy(PolicyBase[DefaultParams, DefaultState]):
    name = "default"
    params_type = DefaultParams
    state_type = DefaultState
    default_rails = {"up_cooldown_s": 0.0, "down_cooldown_s": 0.0, "max_step_down": 1024}

    def __init__(self, params: DefaultParams) -> None:
        super().__init__(params)
        windows = sorted(set(params.windows))
        margins = sorted(set(params.margins))
        self.arms = [(w, m) for w in windows for m in margins]
        self.longest = windows[-1]
        self._windows = windows
        self._factors = [1 + m for m in margins]

    def _charge(self, state: DefaultState, demand: float, censored: bool, vcpus: int) -> None:
        p = self.params
        costs, previous, before = state.costs, state.previous, state.before or state.previous
        memory, idle_cost, change_cost = p.memory, p.idle_cost, p.change_cost
        # Arms mostly agree: charge each distinct recommendation once.
        charge: dict[int, float] = {}
        for i, r in enumerate(previous):
            c = charge.get(r)
            if c is None:
                if censored:
                    unmet = (vcpus - r if vcpus > r else 0) + (p.censored_shortfall if r <= vcpus else 0.0)
                else:
                    unmet = demand - r if demand > r else 0.0
                c = charge[r] = unmet + idle_cost * (r - demand if r > demand else 0.0)
            moved = r - before[i]
            costs[i] = memory * costs[i] + c + change_cost * (moved if moved >= 0 else -moved)

    def recommend(self, state: DefaultState, obs: Observation) -> Recommendation:
        if obs.pressure_cores is not None:
            demand, censored = obs.used_cores + obs.pressure_cores, False
        else:
            demand, censored = obs.used_cores, obs.used_cores >= obs.vcpus - 1e-9
        if not state.costs:
            state.costs = [0.0] * len(self.arms)
        if state.previous:
            self._charge(state, demand, censored, obs.vcpus)
        history = state.history
        history.append(demand)
        if len(history) > self.longest:
            history.popleft()

        n = obs.vcpus
        seen = demand if not censored else n + self.params.censored_shortfall
        if state.vcpus and n != state.vcpus:
            state.last_move, state.peak_since_move = (1 if n > state.vcpus else -1), seen
        else:
            state.peak_since_move = max(state.peak_since_move, seen)
        state.vcpus = n

        recent = list(history)
        low, high = obs.min_vcpus, obs.max_vcpus
        peaks = [max(recent[-w:]) for w in self._windows]
        recs = []
        for peak in peaks:
            for factor in self._factors:
                r = math.ceil(peak * factor - 1e-9)
                recs.append(high if r > high else low if r < low else r)
        state.before, state.previous = state.previous, recs

        costs = state.costs
        best = costs.index(min(costs))
        state.chosen = best
        w, m = self.arms[best]
        peak = peaks[best // len(self._factors)]
        target = recs[best]
        # Never grow back after a shrink on old evidence: only demand seen since the shrink may undo it
        # (otherwise a switch to a longer window's arm alone would re-plug what was just unplugged).
        if target > n and state.last_move < 0 and state.peak_since_move <= n:
            return Recommendation(n, f"hold: no demand above {n} vCPUs since the last shrink", "hold")
        return Recommendation(target, f"peak of last {w} x{1 + m:g} = {peak * (1 + m):.2f} cores "
                                      f"(arm cost {costs[best]:.2f})", f"window-{w}")
