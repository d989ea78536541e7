"""The example hypervisor plug-in (``examples/toy_hypervisor.py``) under ``hotplug up``, named only in
``$HOTPLUG_PLUGINS``: ``up`` provisions its VMs, its source reports them, the decider grows them and its driver
applies the commands to the hypervisor itself (a VM's file)."""

from __future__ import annotations

import json
from pathlib import Path

from hotplug.harness.poll import wait_until
from hotplug.harness.processes import REPO, OutputProcess, run_hotplug
from tests.conftest import LIVELY_DECIDER

EXAMPLE = REPO / "examples" / "toy_hypervisor.py"


def test_up_runs_the_example_hypervisor_plugin_end_to_end(tmp_path: Path) -> None:
    env = {"HOTPLUG_PLUGINS": str(EXAMPLE)}
    data_dir = tmp_path / "run"
    up = OutputProcess.hotplug(
        *("up", "--hypervisor", "toyhv", "--vms", "2", "--max-vcpus", "3", "--toyhv-demand", "3"),
        *("--duration", "300", "--data-dir", str(data_dir), "--no-view", *LIVELY_DECIDER),
        env=env,
    )
    try:
        folder = Path(up.wait_for(r"^toyhv: 2 VMs in (\S+)$", timeout=60).group(1))
        assert folder == data_dir / "toyhv"
        for service in ("collector", "decider", "actuator"):
            up.wait_for(rf"^{service} metrics: http://127\.0\.0\.1:\d+/metrics$", timeout=30)
        assert not any(line.startswith("simulator metrics") for line in up.lines)  # no simulated cloud

        # Saturated on 1 vCPU, a VM is grown: the result is ok, and the hypervisor holds the new count.
        up.wait_for(r"^toy-01: 1 -> 2 ok$", timeout=60)

        def grown() -> bool:
            return int(json.loads((folder / "toy-01.json").read_text())["vcpus"]) >= 2

        assert wait_until(grown, 10), (folder / "toy-01.json").read_text()
        up.wait_for(r"^toy-02: 2 -> 3 ok$", timeout=60)  # to its --max-vcpus, one step at a time
    finally:
        code = up.interrupt(timeout_s=60)
    assert code == 0, up.text()
    text = up.text()
    assert "VMs: 2" in text
    assert not folder.exists()  # up undid its provisioning after the services stopped

    events = run_hotplug("events", "--data-dir", str(data_dir), "--format", "jsonl", env=env)
    assert events.returncode == 0, events.stderr
    results = [json.loads(line) for line in events.stdout.splitlines()]
    applied = {(r["vm"], r["vcpus_after"]) for r in results if r["kind"] == "result" and r["ok"]}
    assert {("toy-01", 2), ("toy-02", 3)} <= applied


def test_up_refuses_another_hypervisors_options_and_checks_the_plugins_own() -> None:
    env = {"HOTPLUG_PLUGINS": str(EXAMPLE)}
    wrong = run_hotplug("up", "--hypervisor", "toyhv", "--trace", "x.csv", env=env)
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == "hotplug up: --trace: options of --hypervisor simulator, not of toyhv"
    bad = run_hotplug("up", "--hypervisor", "toyhv", "--toyhv-demand", "100", env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "hotplug up: --toyhv-demand takes cores from 0 to 64, got 100"
    other = run_hotplug("up", "--toyhv-demand", "2", env=env)
    assert "--toyhv-demand: options of --hypervisor toyhv, not of simulator" in other.stderr
