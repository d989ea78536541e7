"""The services as separate processes on a real nats-server: a load step plugs, its end unplugs, and bad
input on every subject is counted and dropped while the loop keeps working."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client

from hotplug.harness import recorder as harness_recorder
from hotplug.harness.processes import run_hotplug
from shared import bus, subjects
from shared.broker import EmbeddedBroker
from shared.codec import encode
from shared.eventlog import read_events
from shared.messages import MetricSample, ScaleCommand, ScaleResult
from tests.conftest import ServiceProcess, eventually, metric

SPEED = "4"

# Under `-n` (bin/test) this module is xdist group "loop-processes": see XDIST_GROUPS in tests/conftest.py.


@dataclass
class Loop:
    url: str
    services: dict[str, ServiceProcess]
    logs: Path


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    tmp = tmp_path_factory.mktemp("loop")
    with EmbeddedBroker(tmp / "nats") as broker:
        common = ["--nats", broker.url, "--host", "local", "--speed", SPEED]
        specs = {
            "simulator": ["--vms", "3", "--profiles", "idle", "--hotplug-delay", "0.2"],
            "collector": ["--interval", "1"],
            "decider": [
                "--policy",
                "threshold",
                "--param",
                "threshold.sustain_s=2",
                "--param",
                "guard.up_cooldown_s=2",
                "--param",
                "guard.down_cooldown_s=4",
            ],
            "actuator": [],
        }
        services: dict[str, ServiceProcess] = {}
        try:
            for name, extra in specs.items():
                proc = ServiceProcess([name, *common, *extra], tmp / f"{name}.log")
                proc.wait_ready()
                services[name] = proc
            yield Loop(broker.url, services, tmp)
        finally:
            for proc in services.values():
                proc.stop()


class Recorder(harness_recorder.Recorder):
    def results_for(self, vm: str, pred: Callable[[ScaleResult], bool]) -> list[ScaleResult]:
        return [r for r in self.results if r.vm == vm and pred(r)]


@pytest.fixture
async def client(loop: Loop) -> AsyncIterator[tuple[Client, Recorder]]:
    nc = await bus.connect(loop.url, "test", forever=False)
    rec = Recorder()
    await rec.attach(nc)
    yield nc, rec
    await nc.close()


def hotplug_load(url: str, vm: str, cores: str) -> None:
    done = run_hotplug("load", vm, cores, "--nats", url, timeout=30)
    assert done.returncode == 0, done.stderr


async def test_load_step_plugs_and_its_end_unplugs(loop: Loop, client: tuple[Client, Recorder]) -> None:
    nc, rec = client
    vm = "vm-01"  # boots with 2 of 4 vCPUs; its idle workload first shrinks it to 1
    await asyncio.to_thread(hotplug_load, loop.url, vm, "4")
    await eventually(
        lambda: rec.results_for(vm, lambda r: r.ok and (r.vcpus_after or 0) > (r.vcpus_before or 0)),
        timeout=40,
        what="a plug after the load step",
    )
    await eventually(
        lambda: any(s.vm == vm and s.online_vcpus == 4 for s in rec.samples),
        timeout=40,
        what="the VM reaching its maximum under full load",
    )
    await asyncio.to_thread(hotplug_load, loop.url, vm, "0.05")
    await eventually(
        lambda: rec.results_for(vm, lambda r: r.ok and (r.vcpus_after or 9) < (r.vcpus_before or 0)),
        timeout=40,
        what="an unplug after the load ends",
    )
    # the event log holds every command of this VM, each with exactly one result
    # (the loop runs on: read until every command logged so far has its result logged too, then count them)
    ids: list[str] = []
    result_ids: list[str] = []

    async def every_command_answered() -> bool:
        logged = [event async for _, event in read_events(nc.jetstream())]
        ids[:] = [e.id for e in logged if isinstance(e, ScaleCommand) and e.vm == vm]
        result_ids[:] = [e.command_id for e in logged if isinstance(e, ScaleResult) and e.vm == vm]
        return bool(ids) and set(ids) <= set(result_ids)

    await eventually(every_command_answered, timeout=30, what="every logged command's result in the event log")
    assert sorted(result_ids) == sorted(ids)
    plug = rec.results_for(vm, lambda r: r.ok and (r.vcpus_after or 0) > (r.vcpus_before or 0))[0]
    command = next(c for c in rec.commands if c.id == plug.command_id)
    assert plug.vcpus_after == command.target_vcpus
    assert command.reason.startswith("cpu ")


@pytest.mark.parametrize(
    ("subject_kind", "service", "kind"),
    [("metrics", "decider", "metric"), ("commands", "actuator", "command"), ("results", "decider", "result")],
)
async def test_malformed_messages_are_counted_dropped_and_survived(
    loop: Loop, client: tuple[Client, Recorder], subject_kind: str, service: str, kind: str
) -> None:
    nc, rec = client
    url = loop.services[service].metrics_url
    # A VM the loop's simulator does not run: the decider's intake keeps each VM's newest sample undecoded until its
    # turn, so bad samples on a running VM's subject could all be replaced, unjudged, by its next real sample.
    subject = f"hotplug.{subject_kind}.local.vm-bad"
    before = metric(url, "hotplug_messages_dropped_total", kind=kind)
    bad_payloads = [b"garbage", b'{"type":"x","v":1}', b'{"v":99}', b"{" + b" " * 70_000 + b"}"]
    js = nc.jetstream()
    for payload in bad_payloads:
        if subject_kind == "commands":
            await js.publish(subject, payload)  # the actuator reads commands from the event log
        else:
            await nc.publish(subject, payload)
    # a well-formed message whose body names another VM than its subject is dropped too
    sample = MetricSample(
        time=1.0,
        host="local",
        vm="vm-03",
        online_vcpus=1,
        min_vcpus=1,
        max_vcpus=2,
        cpu_used_cores=0.0,
        interval_s=1.0,
        source="t",
    )
    if subject_kind == "metrics":
        await nc.publish(subject, encode(sample))
    await nc.flush()
    expected = len(bad_payloads) + (1 if subject_kind == "metrics" else 0)
    await eventually(
        lambda: metric(url, "hotplug_messages_dropped_total", kind=kind) >= before + expected,
        timeout=20,
        what=f"{expected} drops counted by the {service}",
    )
    assert loop.services[service].proc.poll() is None
    assert "dropped" in loop.services[service].log()
    # ... and the loop still works: the decider still takes samples, the actuator still answers commands
    decider_url = loop.services["decider"].metrics_url
    received = metric(decider_url, "hotplug_messages_received_total", kind="metric")
    await eventually(
        lambda: metric(decider_url, "hotplug_messages_received_total", kind="metric") > received + 3,
        timeout=20,
        what="the decider still receiving samples",
    )
    latest = [s for s in rec.samples if s.vm == "vm-02"][-1]
    probe = ScaleCommand(
        id=f"probe-{subject_kind}",
        time=latest.time,
        host="local",
        vm="vm-02",
        target_vcpus=latest.online_vcpus,
        seen_vcpus=latest.online_vcpus,
        decider="test",
        reason="probe",
        expires_at=latest.time + 3600,
    )
    await js.publish(subjects.commands("local", "vm-02"), encode(probe), headers={"Nats-Msg-Id": probe.id})
    await eventually(
        lambda: [r for r in rec.results if r.command_id == probe.id],
        timeout=20,
        what="a result for a valid command after the bad ones",
    )
    await asyncio.sleep(0.5)
    assert len([r for r in rec.results if r.command_id == probe.id]) == 1
