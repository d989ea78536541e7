"""How ``hotplug up`` ends a run: its decider stops first and the actuator answers what it was sent, so a command
sent in the run's last moment has its result in the run's own log."""

from __future__ import annotations

import asyncio

import pytest

from hotplug import up
from hotplug.fleet import Fleet
from shared.messages import ScaleCommand, ScaleResult

COMMAND = ScaleCommand(
    id="c-1",
    time=10.0,
    host="h",
    vm="vm-01",
    target_vcpus=2,
    seen_vcpus=1,
    decider="d",
    reason="load",
    expires_at=40.0,
)
RESULT = ScaleResult(
    command_id="c-1",
    time=10.5,
    host="h",
    vm="vm-01",
    ok=True,
    vcpus_before=1,
    vcpus_after=2,
    target_vcpus=2,
    duration_s=0.2,
    actuator="a",
)


class Children:
    """A supervisor's children, as ``_stop_deciding`` sees them: it retires one; the rest keep running."""

    def __init__(self, names: tuple[str, ...], fleet: Fleet, answer: bool) -> None:
        self.children = dict.fromkeys(names)
        self.retired: list[str] = []
        self.fleet, self.answer = fleet, answer

    async def retire(self, name: str) -> None:
        self.retired.append(name)
        if self.answer:  # the actuator, still running, answers a moment later
            asyncio.get_running_loop().call_later(0.1, self.fleet.on_result, RESULT)


async def test_the_decider_stops_first_and_the_run_waits_for_the_last_commands_result() -> None:
    fleet = Fleet()
    fleet.on_command(COMMAND)
    children = Children(("simulator", "collector", "decider", "actuator"), fleet, answer=True)
    await up._stop_deciding(children, fleet)  # type: ignore[arg-type]
    assert children.retired == ["decider"]
    assert fleet.unanswered == 0
    assert fleet.totals.results_ok == 1


async def test_a_command_left_unanswered_is_named_at_the_end(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(up, "ANSWER_GRACE_S", 0.3)
    fleet = Fleet()
    fleet.on_command(COMMAND)
    children = Children(("collector", "actuator"), fleet, answer=False)  # --no-decider: nothing to retire
    await up._stop_deciding(children, fleet)  # type: ignore[arg-type]
    assert children.retired == []
    assert "1 command(s) unanswered" in capsys.readouterr().out
