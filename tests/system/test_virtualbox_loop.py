"""``hotplug up --hypervisor virtualbox`` against the stand-in VBoxManage (VirtualBox cannot run here):
a load step plugs the lowest free CPU id, its end unplugs the highest, results carry the re-read counts,
and a VM whose guest refuses every unplug does not stop the actuator from serving the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotplug.harness.poll import wait_until
from hotplug.harness.processes import OutputProcess, policy_args, run_hotplug
from tests.conftest import roomy_host_config
from tests.standins import vboxmanage as standin
from tests.vbox_fixtures import VBoxHome


@pytest.mark.timeout(480)  # a hang guard above the waits' deadlines, each of which ends as soon as its line appears
def test_up_on_virtualbox_plugs_and_unplugs_by_id(vbox: VBoxHome, tmp_path: Path) -> None:
    vbox.create("train 1", max_vcpus=4, attached=1)
    vbox.create("stubborn", max_vcpus=2, attached=2)
    standin.set_guest("stubborn", "none")  # no Guest Additions: every unplug is refused
    data_dir = str(tmp_path / "run")
    out = OutputProcess.hotplug(
        "up",
        "--hypervisor",
        "virtualbox",
        "--data-dir",
        data_dir,
        "--no-view",
        "--config",
        str(roomy_host_config(tmp_path)),
        # the plumbing, not warm-up; bands that a starved stand-in still crosses (its load is real CPU, and beside
        # other tests and a CPU hog a busy EMT thread gets a share of 2 cores: the default upper band of 0.8 then
        # needed the machine nearly to itself). An idle EMT thread sleeps: far below the lower band.
        *policy_args(
            "threshold",
            {
                "threshold.sustain_s": 2,
                "threshold.upper": 0.25,
                "threshold.lower": 0.1,
                "guard.up_cooldown_s": 1,
                "guard.down_cooldown_s": 2,
                "guard.warmup_s": 0,
            },
        ),
    )
    try:
        out.wait_for(r"^actuator metrics: ", timeout=30)
        out.wait_for(r"^stubborn: 2 -> 2 failed \(guest-refused\)$", timeout=40)
        # The stand-in's vCPU threads really burn the load: on a loaded machine (other tests, other work) they
        # take longer to read as busy, hence the roomy deadlines (each wait ends as soon as the line appears).
        standin.set_load("train 1", 2.0)
        out.wait_for(r"^train 1: 1 -> 2 ok$", timeout=120)
        assert vbox.attached("train 1")[:2] == [0, 1]
        standin.set_load("train 1", 0.0)
        mark = len(out.lines)
        out.wait_for(r"^train 1: \d -> \d ok$", timeout=120, after=mark)
        # one vCPU at a time: from as many as 4 if the busy threads grew it past 2 (the band is low)
        assert wait_until(lambda: vbox.attached("train 1") == [0], 120), vbox.attached("train 1")
    finally:
        code = out.interrupt(timeout_s=60)
    assert code == 0, out.text()

    train_calls = [c[-2:] for c in vbox.calls() if c[:3] == ["-q", "controlvm", "train 1"]]
    plugs = [c for c in train_calls if c[0] == "plugcpu"]
    unplugs = [c for c in train_calls if c[0] == "unplugcpu"]
    assert plugs[0] == ["plugcpu", "1"]  # the lowest free id
    assert unplugs[-1] == ["unplugcpu", "1"]  # the highest attached when going back to CPU 0 alone
    assert ["unplugcpu", "0"] not in train_calls

    events = run_hotplug("events", "--data-dir", data_dir, "--format", "jsonl")
    assert events.returncode == 0, events.stderr
    records = [json.loads(line) for line in events.stdout.splitlines()]
    results = [r for r in records if r["kind"] == "result"]
    train = [r for r in results if r["vm"] == "train 1" and r["ok"]]
    assert any((r["vcpus_before"], r["vcpus_after"]) == (1, 2) for r in train)
    assert any(r["vcpus_after"] < r["vcpus_before"] for r in train)
    stubborn = [r for r in results if r["vm"] == "stubborn"]
    assert stubborn
    assert all(r["error_code"] == "guest-refused" for r in stubborn)
    assert all(r["vcpus_before"] == r["vcpus_after"] == 2 for r in stubborn)
    assert "may still be used by the guest" in stubborn[0]["error"]
    commands = [r for r in records if r["kind"] == "command"]
    assert sorted(r["command_id"] for r in results) == sorted(c["id"] for c in commands)
