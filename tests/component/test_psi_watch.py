"""The guest agent's PSI trigger on this machine's kernel: registered on /proc/pressure/cpu, fired by busy processes,
handed to the event loop; and the agent that publishes an urgent sample when it fires.

Outside CI a kernel without PSI triggers (older than 5.2, booted with psi=0, or a /proc that hides them) skips these
tests, saying why; in CI they fail, since the agent's fast path would go untested.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from nats.aio.client import Client

from hotplug.harness.poll import eventually
from services.collector.sources.psi_watch import CPU_PRESSURE, PsiWatch, open_trigger
from services.collector.urgent import TriggerSpec
from shared.broker import EmbeddedBroker

# A low threshold: fired at once by processes that outnumber the CPUs (and on a busy machine, by its own load).
SPEC = TriggerSpec(0.05, 1.0)
FIRE_WITHIN_S = 20.0  # a trigger checked at the 2-s averaging period (no CAP_SYS_RESOURCE) fires within seconds


def psi_triggers_or_skip() -> None:
    try:
        fd, _ = open_trigger(SPEC)
    except OSError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PSI triggers unavailable here ({CPU_PRESSURE}: {exc})")
    os.close(fd)


@pytest.fixture
def load() -> Iterator[Callable[[], None]]:
    """Start (when called) one more busy process than there are CPUs, at the lowest priority so the machine's other
    work goes first: some task then always waits for a CPU, which is what PSI ``some`` counts."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        for _ in range((os.cpu_count() or 1) + 1):
            code = "import os\nos.nice(19)\nwhile True:\n    pass\n"
            started.append(subprocess.Popen([sys.executable, "-c", code]))

    yield start
    for process in started:
        process.kill()
    for process in started:
        process.wait()


async def test_a_registered_trigger_fires_under_load_and_the_loop_hears_it_once_a_window(
    load: Callable[[], None],
) -> None:
    """Under lasting load the trigger fires again each window, never in between: a watch that woke on the file's
    readable state (which the kernel reports at all times) would call back without end."""
    psi_triggers_or_skip()
    loop = asyncio.get_running_loop()
    firings: list[float] = []
    watch = PsiWatch(SPEC, lambda: firings.append(loop.time()), loop)
    try:
        assert watch.spec in (SPEC, SPEC.unprivileged())  # as set, or rounded up for an unprivileged agent
        load()
        await eventually(lambda: len(firings) >= 2, timeout=FIRE_WITHIN_S, what="two firings of the trigger")
    finally:
        watch.close()
    assert firings[1] - firings[0] >= 0.5 * watch.spec.window_s
    assert not watch._thread.is_alive()  # close ends the thread (it waits on the stop pipe too)
    watch.close()  # and again: nothing left to do


async def test_the_agent_publishes_an_urgent_sample_when_the_trigger_fires(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., object], load: Callable[[], None]
) -> None:
    """Regular samples a minute apart: a sample within the wait is one the trigger brought."""
    from hotplug.harness.recorder import Recorder
    from shared import subjects

    psi_triggers_or_skip()
    watch = Recorder()
    await watch.attach(nc, commands=False, results=False, metrics_subject=subjects.metrics("node1", "busy vm"))
    start_service(
        "agent", "--nats", broker.url, "--vm", "busy vm", "--host", "node1", "--interval", "60", "--no-online",
        "--urgent-stall", "0.05",
    )  # fmt: skip
    load()
    await eventually(lambda: watch.samples, timeout=30, what="an urgent sample from the agent")
    sample = watch.samples[0]
    assert sample.urgent and sample.source == "agent"
    assert 0 < sample.interval_s < 60  # from the agent's first read, not a regular interval
