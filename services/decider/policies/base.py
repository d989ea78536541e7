"""The policy interface: pure decision rules, one small protocol, kept apart from input and actuation.

As in Kubernetes VPA's recommender, a policy only turns observations into a recommended size. It owns no
I/O and no clock: its per-VM state is a msgspec Struct (so it can be stored and handed to another decider
instance), and ``recommend`` may update that state in place. Guard rails (bounds, cooldowns, step limits)
are applied afterwards by ``services.decider.guard``, the same for every policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import msgspec

if TYPE_CHECKING:
    from services.decider.harm import HarmSteer


# The values made at every step (an observation, a recommendation) are Structs the garbage collector does not
# track: they hold only numbers and text, so they can be in no reference cycle, and a replay makes millions of them
# (a recommendation as a NamedTuple cost three times as much to make, and each tracked one brings the next
# collection nearer).
class Observation(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a policy sees of one VM at one step."""

    time: float
    vcpus: int
    min_vcpus: int
    max_vcpus: int
    # CPU that ran, in cores: never more than ``vcpus`` (a VM cannot use what it does not have).
    used_cores: float
    interval_s: float
    # Demand that could not run, in cores, when the source can tell; None means unknown, not zero.
    pressure_cores: float | None = None
    # Sent at once on a pressure trigger, between the regular samples (MetricSample.urgent). A policy sees it as any
    # other observation over its interval; the engine never shrinks on it (services.decider.engine).
    urgent: bool = False
    # What the fleet's harm steer multiplies the price of unmet demand by (services.decider.harm); 1 is the policy's
    # own law. Policies that price unmet demand read it; the others ignore it.
    price_factor: float = 1.0

    @property
    def utilisation(self) -> float:
        return self.used_cores / self.vcpus if self.vcpus > 0 else 1.0


class Recommendation(msgspec.Struct, frozen=True, gc=False):
    target: int
    reason: str  # for people: "cpu 92% > 80% for 3 samples"
    kind: str = "hold"  # for metrics: a short, low-cardinality class of the reason
    # The vCPUs the demand seen now needs; the rest of ``target`` is insurance against a burst that may return,
    # which on a full host yields to other VMs' present need (services.decider.pool). None: all of it is need.
    need: int | None = None


class Params(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every policy's parameters. Unknown keys are refused, never silently ignored."""


P = TypeVar("P", bound=Params)
S = TypeVar("S", bound=msgspec.Struct)


# The rails of a policy that holds its own calm: no cooldowns and no step limit of the rails' own, which would only
# delay what its windows and hysteresis already decided.
OWN_CALM: dict[str, float] = {"up_cooldown_s": 0.0, "down_cooldown_s": 0.0, "max_step_down": 1024}


class PolicyBase(Generic[P, S]):
    """Convenience base: holds validated params; subclasses set ``name``, ``params_type`` and ``state_type``."""

    name: ClassVar[str]
    params_type: ClassVar[type[Params]]
    state_type: ClassVar[type[msgspec.Struct]]
    # The parameter that moves this rule along its cost/unmet trade-off, and the values a sweep tries (``hotplug replay
    # --frontier``): wide enough that its curve runs from generous to stingy.
    SWEEP: ClassVar[tuple[str, tuple[float, ...]]]
    # Guard-rail defaults that suit this rule (see guard.GuardRails); users may override each. By default a rule
    # holds its own calm (a stabilisation window, hysteresis): OWN_CALM. A rule without (threshold) sets its own.
    default_rails: ClassVar[dict[str, float]] = OWN_CALM

    def __init__(self, params: P) -> None:
        self.params = params

    def new_state(self) -> S:
        return self.state_type()  # type: ignore[return-value]

    def rail_defaults(self) -> dict[str, float]:
        """The guard-rail defaults for these parameters (``default_rails`` unless a policy derives some)."""
        return dict(self.default_rails)

    def harm_steer(self) -> HarmSteer | None:
        """A new steer of the price factor for the fleet this policy decides (None: its price is not steered)."""
        return None

    def recommend(self, state: S, obs: Observation) -> Recommendation:
        raise NotImplementedError
