"""The replay and the live decider make the same decisions on the same samples (hypothesis).

The live side is the real ``Decider.handle_sample``; only its surroundings are replaced: a clock that reads
the sample's own time (so no sample is stale) and a JetStream stand-in that records what would be stored.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from services.decider.registry import POLICIES, build_policy
from services.decider.replay import replay_series
from services.decider.service import Decider, DeciderConfig, DeciderMetrics
from services.decider.traces import VmSeries
from shared.messages import MetricSample
from tests.stubs import FixedClock, RecordingJetStream, StubContext, StubOptions


def live_allocations(series: VmSeries, name: str) -> list[int]:
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
            clock.t = i * series.step_s
            sample = MetricSample(
                time=clock.t,
                host="h",
                vm=series.name,
                online_vcpus=vcpus,
                min_vcpus=series.min_vcpus,
                max_vcpus=series.max_vcpus,
                cpu_used_cores=min(demand, float(vcpus)),
                interval_s=series.step_s,
                source="trace",
            )
            command = decider.handle_sample(sample)
            await asyncio.sleep(0)
            if command is not None:
                vcpus = command.target_vcpus  # the actuator obeys; the next sample shows it
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
