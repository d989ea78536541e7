"""``hotplug bench replay`` runs each policy with its own ``--param`` entries and says which it ran with: two
Bitbrains VMs from ../shared/traces (linked, not copied), ``default`` with and without its fleet harm steer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evaluation.bench.replay import bench_replay
from services.decider.registry import POLICIES, ParamError
from tests.conftest import REPO

BITBRAINS = REPO.parent / "shared" / "traces" / "bitbrains_rnd" / "2013-7"


def test_each_policy_runs_with_its_own_params_and_the_report_names_them(tmp_path: Path) -> None:
    files = sorted(BITBRAINS.glob("*.csv"))[:2]
    if len(files) < 2:
        if os.environ.get("CI"):
            pytest.fail(f"the shared traces are missing at {BITBRAINS}")
        pytest.skip(f"the shared traces are not at {BITBRAINS}")
    for f in files:
        (tmp_path / f.name).symlink_to(f)
    params = {"default": {"steer_gain": "0"}, "hpa": {"target": "0.5"}}
    report = bench_replay(tmp_path, params)
    assert report["params"] == params
    rates = report["vm_steps_per_cpu_s"]
    assert isinstance(rates, dict) and set(rates) == set(POLICIES) and all(r > 0 for r in rates.values())
    # The entries reach the policies: one that a policy does not have is refused, as replay refuses it.
    with pytest.raises(ParamError, match="no_such_knob"):
        bench_replay(tmp_path, {"default": {"no_such_knob": "1"}})
