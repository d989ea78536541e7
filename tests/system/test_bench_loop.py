"""``hotplug bench loop``: a load step met by a plug, on the simulator and on a real QEMU guest (TCG), with the
time of each stage from the messages of that plug.

The QEMU test boots a real guest (``qemu-system-x86_64`` from bookworm-backports, the guest image built from
Debian's packages); in CI it must run, elsewhere it skips and says what is missing. Under ``-n`` it is in xdist
group "qemu" (XDIST_GROUPS in tests/conftest.py): one TCG guest of QEMU's at a time.
"""

from __future__ import annotations

import json

import pytest

from evaluation.bench.loop import HOTPLUG_DELAY_S, bench_loop
from evaluation.bench.stages import STAGES
from hotplug.harness.processes import run_hotplug
from tests.conftest import require_tool


def test_the_simulator_loop_times_every_stage_of_each_plug() -> None:
    report = bench_loop(vms=2, trials=4)
    assert report["guest"] == "simulator"
    assert report["trials"] == 4
    stages = report["stages"]
    assert isinstance(stages, dict)
    assert set(stages) == set(STAGES)
    # The plug itself takes the simulated hypervisor's delay: the act stage cannot be shorter.
    assert stages["act"]["p50_s"] >= HOTPLUG_DELAY_S
    assert all(stages[s]["p50_s"] >= 0 for s in STAGES)
    assert stages["total"]["p95_s"] >= stages["detect"]["p50_s"]


@pytest.mark.external
def test_a_load_step_inside_a_real_qemu_guest_is_met_by_a_plug() -> None:
    require_tool("qemu-system-x86_64", "qemu-system-x86")
    done = run_hotplug("bench", "loop", "--guest", "qemu", "--trials", "2", "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["guest"], report["vms"], report["trials"]) == ("qemu", 1, 2)
    # Every trial in order, and the guest's first plug in its life timed apart from them.
    assert len(report["trials_s"]) == 2 and len(report["first_plugs_s"]) == 1
    stages = report["stages"]
    # The QEMU driver answers once the guest has the vCPU online: a real plug, never instant.
    assert stages["act"]["p50_s"] > 0
    assert stages["total"]["p50_s"] >= stages["detect"]["p50_s"] > 0
