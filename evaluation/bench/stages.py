"""Where the time from a load step to its vCPU goes: one trial's stages, and their percentiles. Pure.

A trial is a load step at ``step`` (wall clock) met by one plug. The messages of that plug date the rest, on the
shared clock (wall time at speed 1, the only speed the loop benchmarks run at):

* **detect**: step → the end of the first sample that showed the load (``ScaleCommand.sample_time``): the wait for
  the sampling tick, and the source's own reading;
* **decide**: that sample's end → the command (``ScaleCommand.time``): the sample's trip to the decider and the
  decision;
* **deliver**: the command → the actuator starting on it (``ScaleResult.time - duration_s``);
* **act**: the actuator's own time (``duration_s``): the hypervisor's plug call and, where the driver waits for it,
  the guest bringing the vCPU online;
* **report**: the result's time → its arrival at the benchmark;
* **total**: step → the result's arrival.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from evaluation.bench.common import percentile
from shared.messages import ScaleCommand, ScaleResult

STAGES = ("detect", "decide", "deliver", "act", "report", "total")


class Trial(NamedTuple):
    """One load step and the plug that answered it."""

    step: float  # wall time of the load step
    command: ScaleCommand
    result: ScaleResult
    arrived: float  # wall time the result reached the benchmark


def stages_of(trial: Trial) -> dict[str, float]:
    """Each stage's seconds for one trial (a command without ``sample_time`` dates detection by its own time)."""
    command, result = trial.command, trial.result
    sampled = command.sample_time if command.sample_time is not None else command.time
    started = result.time - result.duration_s
    return {
        "detect": sampled - trial.step,
        "decide": command.time - sampled,
        "deliver": started - command.time,
        "act": result.duration_s,
        "report": trial.arrived - result.time,
        "total": trial.arrived - trial.step,
    }


def stage_table(trials: Sequence[Trial]) -> dict[str, dict[str, float]]:
    """p50 and p95 (seconds, to the millisecond) of each stage over ``trials``; the stages add up to the total
    trial by trial, not percentile by percentile."""
    rows = [stages_of(trial) for trial in trials]
    return {
        stage: {
            "p50_s": round(percentile([row[stage] for row in rows], 0.5), 3),
            "p95_s": round(percentile([row[stage] for row in rows], 0.95), 3),
        }
        for stage in STAGES
    }
