"""``hotplug replay --resource memory`` on the Bitbrains memory traces in ../shared/traces: the tables' shape and
sane bounds on both halves (no figure is pinned: the docs hold those). About 15 s for the table and 80 s for the
frontier on one core, hence the system tier; the timeouts only guard against a hang."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from hotplug import cli
from tests.conftest import REPO

TRACES = REPO.parent / "shared" / "traces" / "bitbrains_rnd" / "2013-7-memory"
RULES = {"static", "memory", "mom", "neon"}


def _run(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    if not TRACES.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"the shared memory traces are missing at {TRACES}")
        pytest.skip(f"the shared memory traces are not at {TRACES}")
    argv = ["replay", "--resource", "memory", "--format", "bitbrains-memory", str(TRACES), "--json", *extra]
    assert cli.main(argv) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_policy_gives_back_memory_and_is_short_less_often_than_the_baselines_on_both_halves(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = _run(capsys)
    assert report["vms"] == {"a": 20, "b": 20, "all": 40}
    for name, rules in report["halves"].items():
        assert set(rules) == RULES, name
        static, ours = rules["static"], rules["memory"]
        assert static["ratio_to_provisioned"] == pytest.approx(1.0)
        assert static["shortfall_pct"] == 0.0
        assert static["ratio_to_oracle"] > 1.0  # used is a few % of provisioned
        assert 1.0 < ours["ratio_to_oracle"] < static["ratio_to_oracle"], name
        assert ours["ratio_to_provisioned"] < 1.0, name
        assert ours["shortfall_pct"] < 1.0, name
        assert ours["deep_shortfall_events"] <= ours["shortfall_events"], name
        assert ours["changes_per_vm_hour"] < 1.0, name  # calm: a give-back moves pages for seconds
        for rival in ("mom", "neon"):
            assert ours["shortfall_pct"] < rules[rival]["shortfall_pct"], (name, rival)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_frontier_sweeps_each_knob_from_generous_to_stingy_on_both_halves(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = _run(capsys, "--frontier", "--levels", "0.1,1")
    assert set(report["halves"]) == {"a", "b"}
    for name, entry in report["halves"].items():
        assert entry["vms"] == 20
        static_cost = entry["static"]["ratio_to_oracle"]
        ours = [s for s in entry["sweeps"] if s["rule"] == "memory"]
        assert {s["knob"] for s in ours} == {"headroom", "window_samples"}
        for sweep in ours:
            points = sweep["sweep"]
            # the sweeps run from the stingiest setting to the most generous
            assert points[-1]["ratio_to_oracle"] > points[0]["ratio_to_oracle"], (name, sweep["knob"])
            assert points[-1]["shortfall_pct"] < points[0]["shortfall_pct"], (name, sweep["knob"])
            reached = sweep["cost_at"]["1"]
            assert reached is not None and reached < static_cost, (name, sweep["knob"])
        others = [s for s in entry["sweeps"] if s["rule"] in ("mom", "neon")]
        best_ours = min(s["cost_at"]["0.1"] for s in ours if s["cost_at"]["0.1"] is not None)
        for rival in others:
            cost = rival["cost_at"]["0.1"]
            assert cost is None or cost >= best_ours, (name, rival["rule"])
