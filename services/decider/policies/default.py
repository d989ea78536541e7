"""``default``: the policy we recommend. Per VM, the cheapest of a few simple recommenders ("arms") when an
unmet core costs ``price`` allocated ones, where ``price`` follows from the share of demand the user accepts
to leave unmet (``target_unmet_pct``). Memory, windows, warm-up and costs are in seconds, so the policy means
the same at 1-s sampling live and at 300-s steps in replay.

**Arms.** ``peak of w s × k``: the highest demand of the last ``w`` seconds times ``k``. ``cheapest size over
h s``: the whole size that would have cost least over a memory fading with half-life ``h`` (the newsvendor's
answer: demand exceeds it about ``1/price`` of the time), so one burst in an hour of quiet is worth holding
for when unmet demand is dear and not when it is cheap. Every arm shrinks only when the smaller size saves
at least ``hysteresis`` vCPU, so noise around a whole vCPU never toggles it.

**Choice.** After every sample each arm is charged, in core-seconds, for the size it gave one sample
before: the cores, ``price`` × the demand above them, and ``change_cost_s`` per vCPU moved (hot-plug is not
free; Autopilot's limit-change term). Charges fade over a day. The cheapest arm decides, and keeps deciding
until another is cheaper by more than one change (Autopilot's model-switch term): arms that nearly tie do
not take turns undoing each other.

**Calm.** A VM grows on the sample that shows more demand. It never shrinks below the highest size ordered
within ``stabilise_s`` (Kubernetes HPA's scale-down window), at most halves in one order, never grows back
after a shrink without demand seen since, and is not shrunk at all in its warm-up: ``caution_s × price``
seconds from when the decider first saw it (2 min at the default 1 %, 3.3 h at 0.1 %: the less harm a
user accepts, the more evidence a shrink needs). The decider's guard rails add the change budget.

**Price.** ``1 + 0.005 / τ²`` for a target share τ: fitted on the Bitbrains trace. That law is open-loop, so one
**fleet harm steer** per policy (``services.decider.harm``, on by default: ``steer_gain``) scales its premium
over an idle core by how far the unmet share the whole fleet really leaves, over a week, is from τ; realised unmet
demand then tracks the target within about 12 % from 0.25 % to 8 % on Bitbrains and from 1 % to 8 % on PlanetLab
(docs/deciders.md has the figures). ``feedback_gain`` > 0 instead steers each VM's own price, within ×/÷ 2, by the
unmet share that VM really had (as Autothrottle's Captain steers to a throttling target); it is off by default
because it spends cores evening out VMs rather than serving the fleet (measured in the docs).

**Need.** Every recommendation also says what the demand seen now needs: the size for the highest demand of
the shortest window (``stabilise_s``, or ``need_window_s`` when set) ×1, with the same hysteresis. The rest of
the target (longer windows, multipliers, memories) is insurance against a burst that may return; on a full host it
yields to other VMs' present need (``services.decider.pool``). It never changes the target. A shorter
``need_window_s`` packs a full host tighter at the price of more changes and unmet demand (docs/pool.md, "Host
capacity and overcommit", has the measured trade).

**Censoring.** Demand is what ran plus the pressure when the source reports it. Without pressure a
saturated sample only says the VM wanted at least its vCPUs; it is taken to want ``censored_excess`` of
the room above them (at least a quarter core), both to charge the arms and to grow, so a saturated VM
always grows.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Annotated

import msgspec

from services.decider.harm import HarmSteer, SteerSettings
from services.decider.policies.base import Observation, Params, PolicyBase, Recommendation

MIN_CENSORED_EXCESS_CORES = 0.25
SHRINK_FLOOR = 0.5  # never below this share of the vCPUs it has, in one order
# How far feedback may move the price from its start, either way (a factor): enough to correct a VM that is
# starved or idle beyond the target, not so much that one VM's unlucky hour makes it allocate without limit.
PRICE_RANGE = 2.0
# The price of an unmet core-second for a target share τ: 1 + PRICE_SCALE / τ². Fitted on the Bitbrains trace
# (realised unmet within a few % of τ from 0.25 % to 4 %), checked on PlanetLab and the simulator: see
# docs/deciders.md. An unmet core never costs less than an idle one (the 1 +).
PRICE_SCALE = 0.005
# The faded sums grow as 2^(age / half-life) instead of every old one being faded each sample; they are
# scaled back before they could overflow.
RESCALE_EXPONENT = 60.0
ARM_COSTS_HALF_LIFE_S = 86400.0  # how long an arm's record of costs lasts (Choice)
STEER_HALF_LIFE_S = 86400.0  # ... and the realised unmet share the price is steered by (Price)
# The sizes a window's peak gives are a pure function of (peak, vCPUs, min, max) and the parameters, and the long
# windows' peaks rarely change, so they are looked up in a table shared by every VM; it is emptied when full, so a
# decider that runs for months holds a bounded one.
WINDOW_MEMO_SIZE = 4096
REASONS_SIZE = 4096  # ... and so are the reasons' texts (the arm's, at a price, and the size)
# A range's table before its first entry (read only: entries go in by DefaultPolicy._new_window_sizes).
_NO_TABLE: Mapping[float, tuple[int, ...]] = MappingProxyType({})
# The fleet's harm steer (Price, services.decider.harm). Its gain was chosen on Bitbrains between 1 and 2 and
# checked on PlanetLab (docs/deciders.md); the other constants are round values that were not tuned.
STEER_GAIN = 2.0
STEER_WINDOW_HALF_LIFE_S = 7 * 86400.0
STEER_SETTLE_S = 6 * 3600.0
STEER_MAX_ERROR = 1.0  # a fleet e times off its target moves the price as far as one further off
STEER_RANGE = 25.0  # the price of a target 5 times as tight or as loose, at most (the price goes as 1/τ²)


class DefaultParams(Params, frozen=True, forbid_unknown_fields=True, kw_only=True):
    target_unmet_pct: Annotated[float, msgspec.Meta(gt=0, le=50)] = 1.0
    memories_s: tuple[float, ...] = (7200.0, 86400.0)
    windows_s: tuple[float, ...] = (0.0, 1800.0, 7200.0, 86400.0)  # each at least stabilise_s
    multipliers: tuple[float, ...] = (1.0, 1.15, 1.3, 1.5, 2.0, 3.0)
    stabilise_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    change_cost_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    hysteresis: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1
    censored_excess: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.25
    feedback_gain: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # A VM first seen is not shrunk for caution_s × the price of an unmet core (its warm-up): 2 min at the
    # default 1 %, 3.3 h at 0.1 %. The lower the harm a user accepts, the more evidence a shrink needs.
    caution_s: Annotated[float, msgspec.Meta(ge=0)] = 2.4
    # Present need (what a full host divides by first) is the peak of this many seconds (None: stabilise_s).
    need_window_s: Annotated[float, msgspec.Meta(ge=0)] | None = None
    # The fleet's harm steer (services.decider.harm): how strongly one price factor for every VM follows the unmet
    # share the fleet really leaves, against the target, and over how long a window it is measured. 0: the law alone.
    steer_gain: Annotated[float, msgspec.Meta(ge=0)] = STEER_GAIN
    steer_half_life_s: Annotated[float, msgspec.Meta(gt=0)] = STEER_WINDOW_HALF_LIFE_S

    def __post_init__(self) -> None:
        if self.memories_s and min(self.memories_s) <= 0:
            raise ValueError("default.memories_s must be positive half-lives in seconds")
        if not self.windows_s or min(self.windows_s) < 0:
            raise ValueError("default.windows_s must be non-negative seconds")
        if not self.multipliers or min(self.multipliers) < 1:
            raise ValueError("default.multipliers must be at least 1")


class Memory(msgspec.Struct):
    """The record behind one "cheapest size over h s" arm: what each whole size would have cost, over a memory of
    half-life h: the weight of the samples and, per size ``a``, the weighted demand above ``a`` (sizes past the end
    of the list had none)."""

    weight: float = 0.0
    excess: list[float] = msgspec.field(default_factory=list)


class DefaultState(msgspec.Struct):
    """Per VM. Field names are kept as they are: a state is stored and handed to another decider instance."""

    # Monotone queues of (time, demand), one per window: the peak over each window is the head of its queue.
    peaks: list[deque[tuple[float, float]]] = msgspec.field(default_factory=list)
    memories: list[Memory] = msgspec.field(default_factory=list)  # one per "cheapest size" arm
    reference: float | None = None  # the time the memories' weights are counted from
    costs: list[float] = msgspec.field(default_factory=list)  # each arm's faded record of costs
    previous: list[int] = msgspec.field(default_factory=list)  # each arm's size one sample ago
    before: list[int] = msgspec.field(default_factory=list)  # ... and two samples ago
    chosen: int = -1  # the arm in charge
    unmet_s: float = 0.0  # faded core-seconds of demand the VM really left unmet
    demand_s: float = 0.0  # faded core-seconds of demand
    log_price: float | None = None
    orders: deque[tuple[float, float]] = msgspec.field(default_factory=deque)  # monotone queue of recent sizes
    need_peak: deque[tuple[float, float]] = msgspec.field(default_factory=deque)  # the need window's queue
    vcpus: int = 0  # the allocation at the previous sample
    last_move: int = 0  # direction of the last change seen: +1 grown, -1 shrunk
    peak_since_move: float = 0.0  # highest demand since that change


def _push(queue: deque[tuple[float, float]], t: float, value: float, horizon: float) -> float:
    """Add ``value`` at ``t`` to a monotone max-queue, forget what is older than ``horizon``; the peak."""
    while queue and queue[-1][1] <= value:
        queue.pop()
    queue.append((t, value))
    while queue[0][0] <= horizon and len(queue) > 1:  # the head's age first: it is rarely out of the window
        queue.popleft()
    return queue[0][1]


def cheapest_size(memory: Memory, price: float, low: int, high: int, current: int, hysteresis: float) -> int:
    """The size that would have cost least over ``memory``; a smaller size than ``current`` only if it saves
    at least ``hysteresis`` vCPU on average. The cost is convex in the size, so the search walks from the
    current size towards the lowest of its cheapest sizes and stops there."""
    sizes: list[int] = []
    cheapest_sizes((memory,), price, low, high, current, hysteresis, sizes)
    return sizes[0]


def cheapest_sizes(
    memories: Iterable[Memory], price: float, low: int, high: int, current: int, hysteresis: float, sizes: list[int]
) -> None:
    """``cheapest_size`` of each of ``memories``, appended to ``sizes``: one call for all of a VM's memories, as it
    runs at every sample."""
    start = high if current > high else low if current < low else current
    for memory in memories:
        excess, weight = memory.excess, memory.weight
        if weight <= 0:
            sizes.append(current)
            continue
        # What size a would have cost: its cores and the priced demand above it (sizes past the end of the list had
        # none). Written out at each step rather than called: it runs a few times per memory per sample.
        size = len(excess)
        best, best_cost = start, start * weight + price * (excess[start] if start < size else 0.0)
        start_cost = best_cost
        walked_down = False
        if best > low:
            a = best - 1
            c = a * weight + price * (excess[a] if a < size else 0.0)
            if c <= best_cost:
                best, best_cost, walked_down = a, c, True
                while best > low:
                    a = best - 1
                    c = a * weight + price * (excess[a] if a < size else 0.0)
                    if not c <= best_cost:  # not `>`: a NaN ends the walk
                        break
                    best, best_cost = a, c
        if not walked_down:
            while best < high:
                a = best + 1
                c = a * weight + price * (excess[a] if a < size else 0.0)
                if not c < best_cost:
                    break
                best, best_cost = a, c
        # A shrink not worth its hysteresis keeps the start.
        sizes.append(start if best < start and start_cost - best_cost < hysteresis * weight else best)


class DefaultPolicy(PolicyBase[DefaultParams, DefaultState]):
    name = "default"
    SWEEP = ("target_unmet_pct", (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0))
    params_type = DefaultParams
    state_type = DefaultState

    def __init__(self, params: DefaultParams) -> None:
        super().__init__(params)
        self._half_lives = sorted(set(params.memories_s))
        self._windows = sorted({max(w, params.stabilise_s) for w in params.windows_s})
        self._multipliers = sorted(set(params.multipliers))
        w = params.need_window_s
        self._need_window = None if w is None or w == self._windows[0] else w
        # The need is then what the first arm (the shortest window's peak x1) gives, by the same formula.
        self._need_is_first_arm = self._need_window is None and self._multipliers[0] == 1.0
        self.arms: list[str] = [f"peak of {w:g} s x{k:g}" for w in self._windows for k in self._multipliers] + [
            f"cheapest size over {h:g} s" for h in self._half_lives
        ]
        self._target = params.target_unmet_pct / 100
        self._start_log_price = math.log(1 + PRICE_SCALE / self._target**2)
        self._start_price = math.exp(self._start_log_price)
        # The reasons' beginnings at the start price (every price without feedback), plain and saturated.
        self._whys = [self._why(arm, False, self._start_price) for arm in self.arms]
        self._saturated_whys = [self._why(arm, True, self._start_price) for arm in self.arms]
        # The window-size table: one per range (vCPUs, min, max), found once per sample, each by peak; its entries in
        # all, counted so that the whole is emptied when it holds WINDOW_MEMO_SIZE.
        self._window_memo: dict[tuple[int, int, int], dict[float, tuple[int, ...]]] = {}
        self._window_memo_entries = 0
        self._fade_dt, self._fade = 0.0, 1.0  # the arms' costs' fade for the last interval seen (_charge)
        self._reasons: dict[tuple[str, int], str] = {}
        # The same at other prices (a fleet steer's), by price: plain, then saturated.
        self._priced_whys: dict[float, tuple[list[str], list[str]]] = {}

    def harm_steer(self) -> HarmSteer | None:
        if self.params.steer_gain <= 0:
            return None
        settings = SteerSettings(
            gain=self.params.steer_gain,
            half_life_s=self.params.steer_half_life_s,
            settle_s=STEER_SETTLE_S,
            max_error=STEER_MAX_ERROR,
            range=STEER_RANGE,
        )
        return HarmSteer(self._target, settings, self.demand_of)

    def rail_defaults(self) -> dict[str, float]:
        return {**self.default_rails, "warmup_s": self.params.caution_s * math.exp(self._start_log_price)}

    # -- Censoring -----------------------------------------------------------------------------------------------------

    def demand_of(self, obs: Observation) -> tuple[float, bool]:
        """The demand this sample shows, and whether it is censored (a guess above the vCPUs the VM had)."""
        if obs.pressure_cores is not None:
            return obs.used_cores + obs.pressure_cores, False
        if obs.used_cores >= obs.vcpus - 1e-6:
            room = max(0, obs.max_vcpus - obs.vcpus)
            return obs.vcpus + max(MIN_CENSORED_EXCESS_CORES, self.params.censored_excess * room), True
        return obs.used_cores, False

    # -- Price ---------------------------------------------------------------------------------------------------------

    def _price(self, state: DefaultState, demand: float, vcpus: int, dt: float) -> float:
        """The price of an unmet core-second with feedback: from the target share, steered by the unmet share the
        VM really had (without feedback it is the start price, as ``recommend`` takes it)."""
        fade = 0.5 ** (dt / STEER_HALF_LIFE_S)
        state.unmet_s = fade * state.unmet_s + dt * (demand - vcpus if demand > vcpus else 0.0)
        state.demand_s = fade * state.demand_s + dt * demand
        if state.log_price is None:
            state.log_price = self._start_log_price
        elif state.demand_s > 0:
            error = min(4.0, state.unmet_s / state.demand_s / self._target - 1)
            spread = math.log(PRICE_RANGE)
            state.log_price = min(
                self._start_log_price + spread,
                max(self._start_log_price - spread, state.log_price + self.params.feedback_gain * error * dt / 3600),
            )
        return math.exp(state.log_price)

    # -- Choice --------------------------------------------------------------------------------------------------------

    def _charge(self, state: DefaultState, demand: float, dt: float, price: float) -> None:
        """Each arm pays, in core-seconds, for the size it gave one sample before and the vCPUs it moved."""
        # The fade of one interval, worked out again only when the interval changes (in replay, never).
        if dt == self._fade_dt:
            fade = self._fade
        else:
            fade = self._fade = 0.5 ** (dt / ARM_COSTS_HALF_LIFE_S)
            self._fade_dt = dt
        costs, previous = state.costs, state.previous
        before = state.before or previous
        arms = len(previous)
        # Checked once here rather than by zip(strict=...) in the sums below: any keyword sends zip's call down a slow
        # path (so does strict=False, hence the noqa).
        if len(costs) != arms or len(before) != arms:
            raise ValueError(f"{len(costs)} arms' costs, {arms} and {len(before)} sizes")
        first = previous[0]
        if previous.count(first) == arms:  # every arm gave one size (a VM at little demand, or held at one size)
            paid = dt * (first + (price * (demand - first) if demand > first else 0.0))
            if previous == before:  # ... and none moved: one price for all, and no change term
                # Arms that have always agreed (a VM whose range is one size) have one cost: fade it once. Equal
                # floats give equal sums, except that 0.0 == -0.0 and they sum apart with a charge of -0.0.
                head = costs[0]
                if head == costs[-1] and paid != 0.0 and costs.count(head) == arms:
                    state.costs = [fade * head + paid] * arms
                else:
                    state.costs = [fade * cost + paid for cost in costs]
                return
            charge = {first: paid}
        else:  # arms mostly agree: price each distinct size once
            charge = {r: dt * (r + (price * (demand - r) if demand > r else 0.0)) for r in set(previous)}
        # An arm that did not move (most, most of the time) adds no change cost: the sum is the same float without
        # the term (were change_cost_s infinite, the term would be NaN and no arm could ever take over either).
        if previous == before:  # no arm moved (most samples): the same sums without comparing each pair
            state.costs = [fade * cost + charge[r] for cost, r in zip(costs, previous)]  # noqa: B905
            return
        change_cost = self.params.change_cost_s
        state.costs = [
            fade * cost + charge[r] if r == b else fade * cost + charge[r] + change_cost * (r - b if r > b else b - r)
            for cost, r, b in zip(costs, previous, before)  # noqa: B905
        ]

    def _choose(self, state: DefaultState) -> int:
        """The arm in charge: kept unless another is cheaper by more than a change costs (Autopilot's model-switch
        term), so that arms that nearly tie do not take turns, each undoing the other's order."""
        costs = state.costs
        best = state.chosen
        head = costs[0]
        # Arms charged one price for all (_charge's shortcut, and the start) hold one float object, the cheapest: then
        # min's compare of every cost is skipped (nearly half the samples in replay); count finds identical objects
        # without comparing them. min would return that first cost too, since none is below it.
        cheapest = head if costs[-1] is head and costs.count(head) == len(costs) else min(costs)
        if best < 0 or cheapest < costs[best] - self.params.change_cost_s:
            # On a tie (no evidence yet) the last arm, the longest memory's: the most cautious.
            best = max(i for i, c in enumerate(costs) if c <= cheapest)
            state.chosen = best
        return best

    # -- Arms ----------------------------------------------------------------------------------------------------------

    def _remember(self, state: DefaultState, t: float, demand: float, dt: float, high: int) -> None:
        """Each memory (a "cheapest size" arm's record) takes the sample, weighted to grow with time."""
        reference = state.reference
        if reference is None:
            reference = state.reference = t
        top = math.ceil(demand)  # sizes from this one up had no demand above them
        memories, half_lives = state.memories, self._half_lives
        # Checked here rather than by zip(strict=...): any keyword sends zip's call down a slow path that costs more
        # than the whole loop's arithmetic (so does strict=False, hence the noqa).
        if len(memories) != len(half_lives):
            raise ValueError(f"{len(memories)} memories for {len(half_lives)} half-lives")
        for memory, half_life in zip(memories, half_lives):  # noqa: B905
            exponent = (t - reference) / half_life
            if exponent > RESCALE_EXPONENT:
                self._rescale(state, t)
                reference, exponent = t, 0.0
            w = dt * 2.0**exponent
            memory.weight += w
            excess = memory.excess
            size = len(excess)
            if size <= high:
                excess.extend([0.0] * (high + 1 - size))
                size = high + 1
            if top == 1 and size:  # most samples (under one core): the loop's one step, w * (demand - 0)
                excess[0] += w * demand
            else:
                for a in range(top if top < size else size):
                    excess[a] += w * (demand - a)

    def _rescale(self, state: DefaultState, t: float) -> None:
        assert state.reference is not None
        for memory, half_life in zip(state.memories, self._half_lives, strict=True):
            scale = 2.0 ** (-(t - state.reference) / half_life)
            memory.weight *= scale
            memory.excess = [e * scale for e in memory.excess]
        state.reference = t

    def _arm_sizes(self, state: DefaultState, obs: Observation, demand: float, price: float) -> list[int]:
        """The size each arm gives now: the peaks of the windows times each multiplier, then the memories'
        cheapest sizes; any shrink leaves ``hysteresis`` of headroom."""
        n, low, high, t = obs.vcpus, obs.min_vcpus, obs.max_vcpus, obs.time
        memo = self._window_memo
        one_size = low == high  # a VM whose range is one size (a third of Bitbrains' VMs): sized below, at once
        # The range's table, looked up once here rather than by a key of four for each window's peak.
        table = memo.get((n, low, high), _NO_TABLE) if not one_size else _NO_TABLE
        sizes: list[int] = []
        last_peak = math.nan  # equal to no peak
        window_sizes: tuple[int, ...] = ()
        sample = (t, demand)
        peaks, windows = state.peaks, self._windows
        if len(peaks) != len(windows):  # as in _remember: not zip(strict=True)
            raise ValueError(f"{len(peaks)} peaks for {len(windows)} windows")
        for queue, window in zip(peaks, windows):  # noqa: B905
            # _push written out, with one tuple for all windows: it runs for every window of every sample.
            while queue and queue[-1][1] <= demand:
                queue.pop()
            queue.append(sample)
            horizon = t - window
            while queue[0][0] <= horizon and len(queue) > 1:
                queue.popleft()
            if one_size:
                continue
            peak = queue[0][1]
            if peak != last_peak:  # longer windows often hold the same peak: then the same sizes
                found = table.get(peak)
                if found is None:
                    found = self._new_window_sizes(peak, n, low, high)
                last_peak, window_sizes = peak, found
            sizes += window_sizes
        if one_size:
            # What the table and cheapest_size give in a range of one size: that size, but for a memory that has no
            # weight yet, which keeps the vCPUs the VM has.
            sizes = [low] * (len(windows) * len(self._multipliers))
            for memory in state.memories:
                sizes.append(n if memory.weight <= 0 else low)
            return sizes
        cheapest_sizes(state.memories, price, low, high, n, self.params.hysteresis, sizes)
        return sizes

    def _new_window_sizes(self, peak: float, n: int, low: int, high: int) -> tuple[int, ...]:
        """``_window_sizes`` for a peak not in the table, which keeps them (emptied first when full)."""
        memo = self._window_memo
        if self._window_memo_entries >= WINDOW_MEMO_SIZE:
            memo.clear()
            self._window_memo_entries = 0
        table = memo.get((n, low, high))
        if table is None:
            table = memo[n, low, high] = {}
        found = table[peak] = self._window_sizes(peak, n, low, high)
        self._window_memo_entries += 1
        return found

    def _window_sizes(self, peak: float, n: int, low: int, high: int) -> tuple[int, ...]:
        """The size each multiplier gives a window's ``peak`` at ``n`` vCPUs, within ``low`` and ``high``."""
        ceil, h = math.ceil, self.params.hysteresis
        sizes = []
        for k in self._multipliers:
            wanted = peak * k
            r = ceil(wanted - 1e-9)
            if r < n:  # shrink only as far as leaves `hysteresis` of headroom
                r = min(n, ceil(wanted + h - 1e-9))
            sizes.append(high if r > high else low if r < low else r)
        return tuple(sizes)

    # -- Need ----------------------------------------------------------------------------------------------------------

    def _need(self, state: DefaultState, obs: Observation, demand: float) -> int:
        """What the demand seen now needs: the shortest window's peak ×1 (or ``need_window_s``'s), with the same
        hysteresis as the arms. Needs the windows' queues updated for this sample (``_arm_sizes``)."""
        if self._need_window is None:
            recent = state.peaks[0][0][1]
        else:
            recent = _push(state.need_peak, obs.time, demand, obs.time - self._need_window)
        n = obs.vcpus
        need = math.ceil(recent - 1e-9)
        if need < n:
            need = min(n, math.ceil(recent + self.params.hysteresis - 1e-9))
        low, high = obs.min_vcpus, obs.max_vcpus
        return high if need > high else low if need < low else need

    # -- Calm ----------------------------------------------------------------------------------------------------------

    def _calm(
        self, state: DefaultState, obs: Observation, demand: float, size: int, why: str, need: int
    ) -> Recommendation:
        """The chosen arm's ``size`` as an order: a grow at once; a shrink at most halving, never below the highest
        size ordered within ``stabilise_s``; no grow back after a shrink without demand seen since."""
        n = obs.vcpus
        if state.vcpus and n != state.vcpus:
            state.last_move, state.peak_since_move = (1 if n > state.vcpus else -1), demand
        elif demand > state.peak_since_move:
            state.peak_since_move = demand
        state.vcpus = n
        target = size
        # Down-stabilisation (HPA's): never below the highest size of the last window, whichever arm gave it, so a
        # change of arm cannot shrink what was just grown.
        if target < n:
            # At most halve per order (Captain's rule): a shrink on thin evidence, just after warm-up, is tried
            # in steps, each a stabilisation window apart, rather than all at once.
            floor = math.ceil(n * SHRINK_FLOOR)
            if target < floor:
                target = floor
        stabilise_s = self.params.stabilise_s
        # _push written out (it runs at every sample); the highest size held is a whole float, made an int only when
        # it is used.
        orders, t, ordered = state.orders, obs.time, float(target)
        while orders and orders[-1][1] <= ordered:
            orders.pop()
        orders.append((t, ordered))
        horizon = t - stabilise_s
        while orders[0][0] <= horizon and len(orders) > 1:
            orders.popleft()
        held = orders[0][1]
        if target < n and held > target:
            target = min(n, int(held))
            if target == n:
                return Recommendation(
                    n,
                    f"{why}: {size}; held: {n} vCPUs were wanted within the last {stabilise_s:g} s",
                    "stabilising",
                    need,
                )
        # Never grow back after a shrink on old evidence: only demand seen since the shrink may undo it.
        if target > n and state.last_move < 0 and state.peak_since_move <= n:
            return Recommendation(n, f"hold: no demand above {n} vCPUs since the last shrink", "hold", need)
        kind = "grow" if target > n else "shrink" if target < n else "hold"
        # The reason's text is made once per arm's text and size (a few per VM), not once per sample.
        reasons = self._reasons
        reason = reasons.get((why, target))
        if reason is None:
            if len(reasons) >= REASONS_SIZE:
                reasons.clear()
            reason = reasons[why, target] = f"{why}: {target} vCPUs"
        return Recommendation(target, reason, kind, need)

    def recommend(self, state: DefaultState, obs: Observation) -> Recommendation:
        """The module docstring's sections, in turn."""
        demand, censored = self.demand_of(obs)
        dt = obs.interval_s
        if not state.costs:
            state.memories = [Memory() for _ in self._half_lives]
            state.peaks = [deque() for _ in self._windows]
            state.costs = [0.0] * len(self.arms)
        price = self._price(state, demand, obs.vcpus, dt) if self.params.feedback_gain else self._start_price
        if obs.price_factor != 1.0:
            price = 1 + (price - 1) * obs.price_factor  # the law's premium over an idle core, scaled
        if state.previous:
            self._charge(state, demand, dt, price)
        self._remember(state, obs.time, demand, dt, obs.max_vcpus)
        sizes = self._arm_sizes(state, obs, demand, price)
        state.before, state.previous = state.previous, sizes
        need = sizes[0] if self._need_is_first_arm else self._need(state, obs, demand)
        best = self._choose(state)
        if price == self._start_price:
            why = (self._saturated_whys if censored else self._whys)[best]
        else:  # a fleet steer's price: looked up here rather than by a call, as it is at nearly every sample
            whys = self._priced_whys.get(price) or self._whys_at(price)
            why = whys[censored][best]
        return self._calm(state, obs, demand, sizes[best], why, need)

    def _whys_at(self, price: float) -> tuple[list[str], list[str]]:
        """``_why`` for every arm at a price other than the start price, plain then saturated: made once per price,
        since a fleet steer's price holds for an hour for every VM (services.decider.harm)."""
        if len(self._priced_whys) >= REASONS_SIZE:
            self._priced_whys.clear()
        whys = self._priced_whys[price] = (
            [self._why(arm, False, price) for arm in self.arms],
            [self._why(arm, True, price) for arm in self.arms],
        )
        return whys

    @staticmethod
    def _why(arm: str, censored: bool, price: float) -> str:
        """The beginning of a recommendation's reason: the arm in charge and the price it was chosen at."""
        return f"{'saturated; ' if censored else ''}{arm} with unmet demand priced {price:.0f}x"
