"""``hotplug chaos --json`` as a user runs it: a real three-node nats-server cluster with one user per service,
the services as supervised processes, every fault injected into the live loop. The report must show each
fault survived and, over the whole run, nothing lost, nothing doubled, nothing out of bounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from evaluation.chaos import FAULTS
from tests.conftest import REPO


def test_chaos_reports_every_fault_survived_with_nothing_lost_doubled_or_out_of_bounds(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hotplug", "chaos", "--json", "--window", "3", "--data-dir", str(tmp_path / "chaos")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.stdout, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert [f["fault"] for f in report["faults"]] == list(FAULTS)
    for fault in report["faults"]:
        assert fault["ok"], fault
        assert all(fault["survived"].values()), fault
        assert (fault["lost"], fault["duplicated"], fault["out_of_bounds"]) == (0, 0, 0), fault
    totals = report["totals"]
    assert totals["commands"] > 0 and totals["commands"] == totals["results"]
    assert (totals["lost"], totals["duplicated"], totals["out_of_bounds"]) == (0, 0, 0), totals
    assert report["hypervisor_ops"] > 0
    assert report["restarts"]["collector"] >= 1 and report["restarts"]["decider"] >= 1
    assert report["restarts"]["actuator"] >= 1
    assert report["ok"] and done.returncode == 0
