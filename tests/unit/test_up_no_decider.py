"""``hotplug up --no-decider``: the loop without its own decider, for one from outside; and the clock line that
tells such a process the run's ``--speed`` and ``--epoch``."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotplug.cli import main
from hotplug.up import UpOptions, clock_line, services_of


def test_no_decider_runs_every_child_but_the_decider() -> None:
    assert services_of(UpOptions()) == ["simulator", "collector", "decider", "actuator"]
    assert services_of(UpOptions(decider=False)) == ["simulator", "collector", "actuator"]
    assert services_of(UpOptions(decider=False, hypervisor="qemu")) == ["collector", "actuator"]


def test_the_clock_line_gives_the_flags_a_hand_started_service_needs() -> None:
    line = clock_line(10.0, 1234.5)
    assert "--speed 10 --epoch 1234.5" in line


@pytest.mark.parametrize(
    "flags", [["--dry-run"], ["--param", "threshold.upper=0.9"], ["--policy", "threshold"]], ids=lambda f: f[0]
)
def test_no_decider_refuses_the_deciders_own_options_before_anything_starts(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["up", "--no-decider", *flags, "--data-dir", str(tmp_path / "d")]) == 2
    assert "--no-decider runs no decider" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
