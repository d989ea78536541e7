"""Whole-trace sweeps on the recorded traces in ../shared/traces: ``default`` against every other policy at each
level of unmet demand (``hotplug replay --frontier``). One to four minutes per trace set on 2 cores, hence the
system tier; the timeout only guards against a hang (the replay's speed is ``hotplug bench replay``'s business)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from services.decider.policies.default import DefaultPolicy
from services.decider.registry import POLICIES
from shared.traces import load
from tests.conftest import REPO

TRACES = REPO.parent / "shared" / "traces"


def _require_traces() -> None:
    if not TRACES.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"the shared traces are missing at {TRACES}")
        pytest.skip(f"the shared traces are not at {TRACES}")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a hang guard: one core each, beside the other workers, a sweep takes 10-15 min
@pytest.mark.parametrize(
    ("fmt", "path", "vm_size"), [("planetlab", "planetlab/20110303", 4), ("bitbrains", "bitbrains_rnd/2013-7", None)]
)
def test_default_is_the_cheapest_at_every_level_of_unmet_demand(fmt: str, path: str, vm_size: int | None) -> None:
    """Swept along its harm target, ``default`` costs no more than any other policy swept along its own
    trade-off parameter, at each level of unmet demand another one reaches, and it reaches 0.5 %. No
    pressure signal: the harder case, where demand above a VM's size is hidden."""
    _require_traces()
    from evaluation.sweep import frontier_report

    series = load([TRACES / path], fmt, vm_size=vm_size)
    levels = [0.5, 1.0, 2.0, 4.0]
    # Two processes per sweep under pytest-xdist (one per CPU alone): beside the other tests each sweep gets its
    # share of the cores, and once they are done the sweep still running has two (with one process, a core sat idle
    # at the run's end while the last sweep finished on the other).
    workers = 2 if os.environ.get("PYTEST_XDIST_WORKER") else None
    # Every rival is swept over all its declared values; ``default`` over its targets up to twice the highest level
    # (16 % realises 20-50 %, beyond any level here: docs/deciders.md, "The target against what it gives"). Fewer
    # points of ours can only raise our cost at a level, never lower it: the test is no weaker for them.
    ours_values = [v for v in DefaultPolicy.SWEEP[1] if v <= 2 * levels[-1]]
    report = frontier_report(
        series, sorted(POLICIES), {}, pressure=False, levels=levels, workers=workers, values={"default": ours_values}
    )
    policies: dict[str, Any] = report["policies"]  # type: ignore[assignment]
    ours = policies["default"]
    assert ours["lowest_unmet_pct"] <= 0.5
    for level in levels:
        key = f"{level:g}"
        assert ours["cost_at"][key] is not None, level
        for name, rival in policies.items():
            if name != "default" and rival["cost_at"][key] is not None:
                assert ours["cost_at"][key] <= rival["cost_at"][key], (level, name)
    # The target is what the user asked for: realised unmet demand rises with it.
    realised = [point["unmet_pct"] for point in ours["sweep"]]
    assert realised == sorted(realised), realised
