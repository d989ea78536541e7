"""The policy registry: every decision rule by name, and how ``--param NAME.KEY=VALUE`` reaches it.

Memory has one rule (``services.decider.memory``), decided beside whichever vCPU policy a VM runs; its parameters are
``memory.*`` (``build_memory_policy``), the decider's for every VM, and apply whatever the policy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from services.decider.guard import GuardRails
from services.decider.memory import MemoryPolicy, MemorySettingsError, memory_settings
from services.decider.policies.base import PolicyBase
from services.decider.policies.captain import CaptainPolicy
from services.decider.policies.default import DefaultPolicy
from services.decider.policies.fusd import FusdPolicy
from services.decider.policies.hpa import HpaPolicy
from services.decider.policies.threshold import ThresholdPolicy
from services.decider.policies.vpa import VpaPolicy
from shared.errors import UsageError

POLICIES: dict[str, type[PolicyBase[Any, Any]]] = {
    p.name: p for p in (ThresholdPolicy, HpaPolicy, VpaPolicy, FusdPolicy, CaptainPolicy, DefaultPolicy)
}


MEMORY_SCOPE = "memory"  # --param memory.KEY=VALUE: the memory rule's


class ParamError(UsageError):
    """A policy name or ``--param`` that does not fit."""


def build_memory_policy(params: Mapping[str, Mapping[str, object]] | None = None) -> MemoryPolicy:
    """The memory rule with its ``memory.*`` parameters (checked: an unknown key or a value out of range is refused)."""
    try:
        return MemoryPolicy(memory_settings((params or {}).get(MEMORY_SCOPE, {})))
    except MemorySettingsError as exc:
        raise ParamError(str(exc)) from exc


def parse_params(items: list[str]) -> dict[str, dict[str, str]]:
    """``["threshold.upper=0.9", "guard.up_cooldown_s=5"]`` → ``{"threshold": {"upper": "0.9"}, ...}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        scope, dot, name = key.partition(".")
        if not sep or not dot or not scope or not name:
            raise ParamError(f"expected NAME.KEY=VALUE, got {item!r}")
        out.setdefault(scope, {})[name] = value
    return out


def build_policy(
    name: str, params: Mapping[str, Mapping[str, object]] | None = None
) -> tuple[PolicyBase[Any, Any], GuardRails]:
    """The named policy with its parameters, and the guard rails (policy defaults, then ``guard.*``)."""
    params = params or {}
    if name not in POLICIES:
        raise ParamError(f"unknown policy {name!r}; choose from {', '.join(sorted(POLICIES))}")
    unknown_scopes = set(params) - {name, "guard", MEMORY_SCOPE}
    if unknown_scopes:
        raise ParamError(f"parameters for {', '.join(sorted(unknown_scopes))} do not apply to policy {name!r}")
    cls = POLICIES[name]
    try:
        policy = cls(msgspec.convert(params.get(name, {}), cls.params_type, strict=False))
        rails = msgspec.convert({**policy.rail_defaults(), **params.get("guard", {})}, GuardRails, strict=False)
    except msgspec.ValidationError as exc:
        raise ParamError(f"bad parameter for {name}: {exc}") from exc
    return policy, rails
