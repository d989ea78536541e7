"""The fleet's harm steer: one price factor for every VM a policy decides, set by how far the share of demand the
fleet really leaves unmet, over a long window, is from the policy's target. Pure.

A policy prices an unmet core-second by a law of its target share (``default``: ``1 + 0.005 / τ²``, fitted on
one trace). That law is open-loop: on other workloads the same target gives another realised share. The steer
closes the loop where it serves the fleet, not VM by VM: it sums, over every VM it sees, the demand and the part
of it left unmet, faded with a half-life of ``half_life_s`` (a week by default), and prices unmet demand up while
the fleet leaves more than its target, down while it leaves less. Evening out VMs, each with its own price,
spends cores on the VMs whose bursts are dearest to meet (docs/deciders.md).

**What it sees.** The unmet demand the decider can know: a source's pressure when it reports it, else the
policy's own guess for a saturated sample (``demand_of``). A VM at its largest size leaves nothing unmet that a
decision could meet, so such samples count only as demand.

**How it moves.** ``log factor = gain × c × log(realised / target)``, the log clipped to ±``max_error`` and the
factor kept within ×/÷ ``range``; ``c = age / (age + settle_s)`` discounts a short history, which says little
about a 1 % share. It is proportional, without an integrator: a small fleet's unmet share comes in clusters (40
Bitbrains VMs: from 0.5 % to 1.8 % from one day to the next at one price), and an integrator chases them, spending
cores after a cluster and saving them before the next (measured in docs/deciders.md). A proportional steer
leaves part of a bias (with the price's effect on unmet demand about ``price^-1/2``, a gain of 2 halves it) but
never winds up.

Time is the samples' own, in periods of ``period_s`` (an hour): ``advance(now)`` gives the factor for a sample
at ``now``, which is set at the start of ``now``'s period from every sample of the periods before it. The
decider calls it before counting each sample; replay calls it once per period and then replays each VM through
the period (rather than every VM step by step: a VM's state stays at hand). A sample is so priced by the same
past in both, whatever order the VMs come in. The factor's log is rounded to 1e-9, far below anything a week's
share can tell, so that the order in which the samples were summed (time by time live, VM by VM in replay)
cannot change a price by its last bit.

**What it keeps.** ``snapshot`` is all of it (the sums, the factor, the periods it has counted); ``resume`` takes
one back, so a decider that restarts prices by a week of learning rather than by the law alone
(``services.decider.steer_store``). A snapshot taken for another target or other settings is refused: it measured
another steer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated

import msgspec

from services.decider.policies.base import Observation


class SteerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How the fleet's price factor follows the realised unmet share (a policy's parameters carry them)."""

    gain: Annotated[float, msgspec.Meta(ge=0)]  # on the log of the factor, per unit of log(realised / target)
    half_life_s: Annotated[float, msgspec.Meta(gt=0)]  # the window the realised share is measured over
    settle_s: Annotated[float, msgspec.Meta(ge=0)]  # a history this long counts half
    max_error: Annotated[float, msgspec.Meta(gt=0)]  # |log(realised / target)| counted at most
    range: Annotated[float, msgspec.Meta(ge=1)]  # the factor stays within ×/÷ this
    period_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0  # the factor is set at the start of each period


class SteerState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything a steer has learned, as stored and handed back (``HarmSteer.snapshot`` / ``resume``)."""

    target: float
    settings: SteerSettings
    unmet_s: float
    demand_s: float
    log_factor: float
    pending_unmet: float
    pending_demand: float
    last: float | None  # the start of the last period counted
    start: float | None  # ... and of the first


class HarmSteer:
    """One fleet's price factor (see the module docstring). ``demand_of`` is the policy's reading of a sample:
    (demand in cores, whether it is a guess above the vCPUs)."""

    __slots__ = (
        "_demand_of",
        "_factor",
        "_last",
        "_pending_demand",
        "_pending_unmet",
        "_start",
        "demand_s",
        "log_factor",
        "settings",
        "target",
        "unmet_s",
    )

    def __init__(
        self, target_share: float, settings: SteerSettings, demand_of: Callable[[Observation], tuple[float, bool]]
    ) -> None:
        if not 0 < target_share < 1:
            raise ValueError(f"a target unmet share is between 0 and 1, not {target_share}")
        self.target = target_share
        self.settings = settings
        self._demand_of = demand_of
        self.unmet_s = 0.0  # faded core-seconds of demand left unmet
        self.demand_s = 0.0  # faded core-seconds of demand
        self.log_factor = 0.0
        self._factor = 1.0
        self._pending_unmet = 0.0
        self._pending_demand = 0.0
        self._last: float | None = None
        self._start: float | None = None

    @property
    def factor(self) -> float:
        """What the price of an unmet core is multiplied by now (1: the policy's law)."""
        return self._factor

    @property
    def realised_share(self) -> float | None:
        """The unmet share over the window, as far as the decider can know it (None: no demand yet)."""
        return self.unmet_s / self.demand_s if self.demand_s > 0 else None

    @property
    def period(self) -> float | None:
        """The start of the period the factor was last set for (None: never set)."""
        return self._last

    def snapshot(self) -> SteerState:
        return SteerState(
            target=self.target,
            settings=self.settings,
            unmet_s=self.unmet_s,
            demand_s=self.demand_s,
            log_factor=self.log_factor,
            pending_unmet=self._pending_unmet,
            pending_demand=self._pending_demand,
            last=self._last,
            start=self._start,
        )

    def resume(self, state: SteerState, now: float) -> bool:
        """Carry on from ``state`` as if nothing had stopped, for a next sample at ``now``; False (and nothing taken)
        if it is another target's or was measured with other settings.

        A ``now`` before the period the state last counted means the samples' clock went back (a simulator or a
        host clock started again): the state's periods are moved to end at ``now``'s, so that what it learned
        carries on at once instead of waiting, frozen, for the clock to pass where it was."""
        if state.target != self.target or state.settings != self.settings:
            return False
        self.unmet_s, self.demand_s = state.unmet_s, state.demand_s
        self._pending_unmet, self._pending_demand = state.pending_unmet, state.pending_demand
        self._last, self._start = state.last, state.start
        current = self._period_start(now)
        if state.last is not None and current < state.last:
            shift = state.last - current
            self._last = current
            self._start = state.start - shift if state.start is not None else None
        self.log_factor = state.log_factor
        self._factor = math.exp(state.log_factor)
        return True

    def _period_start(self, now: float) -> float:
        period = self.settings.period_s
        return math.floor(now / period) * period

    def observe(self, obs: Observation) -> None:
        """One VM's sample, counted at the next ``advance``."""
        demand, _ = self._demand_of(obs)
        high = obs.max_vcpus
        if demand > high:
            demand = float(high)  # beyond its largest size no decision could serve it
        dt = obs.interval_s
        self._pending_demand += dt * demand
        if demand > obs.vcpus:
            self._pending_unmet += dt * (demand - obs.vcpus)

    def advance(self, now: float) -> float:
        """The factor for a sample at ``now``: at the first call in a new period, what was observed before it is
        folded in (the window faded by the time since the last period counted) and the factor set anew."""
        start = self._period_start(now)
        last = self._last
        if last is not None and start <= last:
            return self._factor
        self._last = start
        if self._start is None:
            self._start = start
        dt = 0.0 if last is None else start - last
        s = self.settings
        fade = 0.5 ** (dt / s.half_life_s)
        self.unmet_s = fade * self.unmet_s + self._pending_unmet
        self.demand_s = fade * self.demand_s + self._pending_demand
        self._pending_unmet = self._pending_demand = 0.0
        allowed = self.target * self.demand_s
        if s.gain > 0 and allowed > 0:
            error = math.log(self.unmet_s / allowed) if self.unmet_s > 0 else -s.max_error
            error = min(s.max_error, max(-s.max_error, error))
            age = start - self._start
            confidence = age / (age + s.settle_s) if age > 0 else 0.0
            spread = math.log(s.range)
            self.log_factor = round(min(spread, max(-spread, s.gain * confidence * error)), 9)
            self._factor = math.exp(self.log_factor)
        return self._factor
