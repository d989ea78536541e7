"""The replay and the live decider make the same decisions on the same samples: on a fixed bursty series for
every policy, with and without pressure (the guard: it fails on any divergence these samples can show), and on
random series (hypothesis: a chance to find a divergence the fixed series cannot show).

The live side is the real ``Decider.handle_sample``; only its surroundings are replaced: a clock that reads
the sample's own time (so no sample is stale) and a JetStream stand-in that records what would be stored.
"""

from __future__ import annotations

import asyncio
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.replay import replay_series
from services.decider.registry import POLICIES, build_policy
from services.decider.service import Decider, DeciderConfig, DeciderMetrics
from shared.messages import MetricSample
from shared.traces import VmSeries
from tests.stubs import FixedClock, RecordingJetStream, StubContext, StubOptions


def live_allocations(series: VmSeries, name: str, pressure: bool = False) -> list[int]:
    """The vCPUs online in each step when the samples of ``series`` go through a live decider; with
    ``pressure``, the samples report the demand that could not run, as a source with a run-queue reading does."""

    async def run() -> list[int]:
        clock = FixedClock()
        ctx = StubContext(StubOptions(clock), DeciderMetrics("decider"), RecordingJetStream())
        policy, rails = build_policy(name)
        decider = Decider(ctx, policy, rails, DeciderConfig(command_ttl_s=1e12))  # type: ignore[arg-type]
        vcpus = series.max_vcpus
        allocations = []
        for i, wanted in enumerate(series.demand):
            allocations.append(vcpus)
            demand = min(wanted, float(series.max_vcpus))
            used = min(demand, float(vcpus))
            clock.t = i * series.step_s
            sample = MetricSample(
                time=clock.t,
                host="h",
                vm=series.name,
                online_vcpus=vcpus,
                min_vcpus=series.min_vcpus,
                max_vcpus=series.max_vcpus,
                cpu_used_cores=used,
                interval_s=series.step_s,
                source="trace",
                pressure_cores=demand - used if pressure else None,
            )
            command = decider.handle_sample(sample)
            await asyncio.sleep(0)
            if command is not None:
                vcpus = command.vcpu_change()[1]  # the actuator obeys; the next sample shows it
        return allocations

    return asyncio.run(run())


@settings(max_examples=40, deadline=None)
@given(
    demand=st.lists(st.floats(0, 20, allow_nan=False), min_size=1, max_size=80),
    size=st.integers(1, 12),
    name=st.sampled_from(sorted(POLICIES)),
)
def test_live_decider_and_replay_agree(demand: list[float], size: int, name: str) -> None:
    series = VmSeries("vm 1", demand, size, 300.0)
    policy, rails = build_policy(name)
    assert live_allocations(series, name) == replay_series(series, policy, rails, pressure=False)


# Quiet, a burst past the VM's size, noise around 2 cores, a square wave, a long quiet; three times over at
# 5-min steps (replay's usual cadence), 15.75 h, so that VPA, which waits 12 h before it acts on drift, acts too.
BURSTY = (
    [0.3] * 4
    + [2.6, 3.4, 7.9, 12.0, 6.5]
    + [0.5] * 6
    + [1.9, 2.05, 1.95, 2.1] * 3
    + [0.1] * 8
    + [5.5] * 4
    + [0.8, 4.2] * 4
    + [0.0] * 10
    + [3.0] * 6
) * 3


@pytest.mark.parametrize("pressure", [False, True], ids=["no-pressure", "pressure"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_live_decider_and_replay_agree_on_a_bursty_series(name: str, pressure: bool) -> None:
    series = VmSeries("vm 1", BURSTY, 8, 300.0)
    policy, rails = build_policy(name)
    replayed = replay_series(series, policy, rails, pressure=pressure)
    assert live_allocations(series, name, pressure) == replayed
    # Not a vacuous agreement: every policy moves the VM on this series, and the VM is saturated at times (where
    # pressure, or the lack of it, shows).
    assert any(a != b for a, b in pairwise(replayed)), replayed
    assert any(d > a for d, a in zip(BURSTY, replayed, strict=True)), replayed
