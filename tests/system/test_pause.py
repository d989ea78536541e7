"""Pause and resume with real processes on a real nats-server: a paused VM is refused by the actuator even when a
decider ignores the pause (commands sent by hand), the decider holds it while moving the others, a resume lets it
move again, a pause that ends while a command is in flight leaves that command exactly one result, and the event
log shows every pause and resume. Under ``hotplug auth``, a viewer may list pauses but not pause."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nats.errors
from nats.aio.client import Client

from hotplug.harness.recorder import Recorder, settle
from shared import pause_bucket, subjects
from shared.broker import EmbeddedBroker
from shared.codec import encode
from shared.messages import ErrorCode, ScaleResult
from shared.pauses import key
from tests.conftest import LIVELY_DECIDER, REPO, ServiceProcess, eventually, metric
from tests.system.test_faults import order, result_of, send, simulated_host
from tests.system.test_security import connect_as, credentials, secured  # noqa: F401  (secured: a fixture)


async def hotplug(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m hotplug ARGS`` in a thread, so the test's own subscriptions keep being served meanwhile."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hotplug", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def held_paused(decider: ServiceProcess) -> float:
    return metric(decider.metrics_url, "hotplug_decider_held_total", reason="paused")


async def test_a_paused_vm_is_refused_held_and_moves_again_once_resumed(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    watch = Recorder()
    await watch.attach(nc)
    # idle VMs at 2 of at most 4 vCPUs: the lively decider shrinks every one it may
    host = await simulated_host(start_service, broker.url, 2, "0.2")
    await eventually(lambda: watch.online.get("vm-01") == 2 and watch.online.get("vm-02") == 2, what="samples")

    paused = await hotplug("pause", "vm-01", "--reason", "kernel upgrade", "--nats", broker.url)
    assert paused.returncode == 0, paused.stderr
    assert "local/vm-01 paused by " in paused.stdout and paused.stdout.strip().endswith(": kernel upgrade")
    await eventually(
        lambda: metric(host.actuator.metrics_url, "hotplug_actuator_paused_vms") == 1, what="the actuator seeing it"
    )

    # a decider that knows nothing of pauses: its order is refused, and the VM is not touched
    await send(nc, ignorant := order("vm-01", 1, 2, decider="ignorant"))
    refused = await result_of(watch, ignorant)
    assert refused.error_code is ErrorCode.PAUSED
    assert refused.error is not None and refused.error.endswith("until resumed: kernel upgrade")
    assert refused.vcpus_before is None and refused.retry_after == 600

    # a decider that knows holds it (counted as paused) and moves the other VM
    decider = start_service("decider", "--nats", broker.url, *LIVELY_DECIDER)
    await eventually(lambda: watch.online.get("vm-02") == 1, timeout=40, what="the decider shrinking vm-02")
    await eventually(lambda: held_paused(decider) >= 3, what="the decider holding vm-01")
    assert [c for c in watch.commands if c.vm == "vm-01" and c.decider != "ignorant"] == []
    assert watch.online["vm-01"] == 2
    listed = await hotplug("paused", "--json", "--nats", broker.url)
    [entry] = json.loads(listed.stdout)
    assert (entry["vm"], entry["host"], entry["reason"], entry["until"]) == ("vm-01", "local", "kernel upgrade", None)

    resumed = await hotplug("resume", "vm-01", "--nats", broker.url)
    assert resumed.returncode == 0, resumed.stderr
    await eventually(lambda: watch.online.get("vm-01") == 1, timeout=40, what="vm-01 moving again")
    moved = [c for c in watch.commands if c.vm == "vm-01" and c.decider == "decider"]
    assert moved and all(r.ok for c in moved for r in watch.results_of(c.id))
    assert metric(host.actuator.metrics_url, "hotplug_actuator_paused_vms") == 0

    events = await hotplug("events", "--format", "jsonl", "--nats", broker.url)
    assert events.returncode == 0, events.stderr
    records = [json.loads(line) for line in events.stdout.splitlines()]
    pauses = [(r["kind"], r["vm"], r["reason"], r["until"]) for r in records if r["kind"] in ("pause", "resume")]
    assert pauses == [("pause", "vm-01", "kernel upgrade", None), ("resume", "vm-01", "", None)]
    assert len({r["by"] for r in records if r["kind"] in ("pause", "resume")}) == 1
    decider.stop()
    commands, results = await settle(nc)
    assert sorted(r.command_id for r in results) == sorted(c.id for c in commands)  # exactly one result each


async def test_a_pause_that_ends_while_commands_are_in_flight_leaves_each_exactly_one_result(
    broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess]
) -> None:
    watch = Recorder()
    await watch.attach(nc)
    host = await simulated_host(start_service, broker.url, 1, "3")
    await eventually(lambda: watch.online.get("vm-01") == 2, what="vm-01 at 2 vCPUs")
    await send(nc, first := order("vm-01", 3, 2))
    await eventually(
        lambda: metric(host.simulator.metrics_url, "hotplug_sim_hotplugs_in_progress", op="plug") == 1,
        what="vm-01's plug under way",
    )
    # paused for a second in the middle of the plug; an order waits behind it meanwhile
    paused = await hotplug("pause", "vm-01", "--for", "1s", "--nats", broker.url)
    assert paused.returncode == 0, paused.stderr
    await send(nc, waiting := order("vm-01", 4, 3))
    done = await result_of(watch, first)
    assert done.ok and done.vcpus_after == 3  # a pause does not stop a command already under way
    second = await result_of(watch, waiting)
    assert second.ok or second.error_code is ErrorCode.PAUSED  # either way, one result
    await eventually(lambda: time.time() > until_of(paused.stdout) + 0.2, what="the pause's end")
    # the pause is over, though its entry is still stored (the broker keeps it a minute more): it is no pause
    assert await stored_pause(nc, "vm-01")
    await send(nc, last := order("vm-01", 2, second.vcpus_after or 3))
    after = await result_of(watch, last)
    assert after.ok, after
    await asyncio.sleep(1.0)
    for command in (first, waiting, last):
        assert len(watch.results_of(command.id)) == 1, command.id


async def test_under_auth_a_viewer_lists_but_cannot_pause_and_only_the_operator_can(
    secured: tuple[Path, EmbeddedBroker],  # noqa: F811
    start_service: Callable[..., ServiceProcess],
) -> None:
    out, _ = secured
    for service, user in (("simulator", "simulator-local"), ("collector", "collector-local")):
        extra = {"simulator": ["--vms", "2", "--profiles", "idle", "--max-vcpus", "4"]}.get(service, [])
        start_service(service, *extra, env=credentials(out, user))
    actuator = start_service("actuator", env=credentials(out, "actuator-local"))
    viewer = credentials(out, "viewer")
    operator = credentials(out, "operator")
    watch = Recorder()
    viewer_nc = await connect_as(out, "viewer", [])
    await watch.attach(viewer_nc)
    await eventually(lambda: watch.online.get("vm-01") == 2, what="samples under auth")

    denied = await hotplug("pause", "vm-01", "--reason", "viewer tries", env=viewer)
    assert denied.returncode != 0
    assert "only the operator" in denied.stderr, denied.stderr
    listed = await hotplug("paused", "--json", env=viewer)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []

    done = await hotplug("pause", "vm-01", "--for", "2h", "--reason", "maintenance", env=operator)
    assert done.returncode == 0, done.stderr
    listed = await hotplug("paused", "--json", env=viewer)
    [entry] = json.loads(listed.stdout)
    assert (entry["vm"], entry["by"], entry["reason"]) == ("vm-01", "operator", "maintenance")
    await eventually(
        lambda: metric(actuator.metrics_url, "hotplug_actuator_paused_vms") == 1, what="the actuator reading it"
    )

    # the decider user may command, but not lift a pause; its order for the paused VM is refused
    errors: list[str] = []
    decider_nc = await connect_as(out, "decider", errors)
    await decider_nc.publish(f"$KV.hotplug_pauses.{key('local', 'vm-01')}", b"")
    await decider_nc.flush()
    await eventually(lambda: errors, timeout=5, what="the broker refusing the decider a write to the bucket")
    assert "permissions violation for publish" in errors[0].lower()
    await decider_nc.jetstream().publish(subjects.commands("local", "vm-01"), encode(order("vm-01", 1, 2)))
    refused = await _first_result(watch, "vm-01")
    assert refused.error_code is ErrorCode.PAUSED and refused.error is not None and "by operator" in refused.error
    # the operator may not command
    operator_errors: list[str] = []
    operator_nc = await connect_as(out, "operator", operator_errors)
    await operator_nc.publish(subjects.commands("local", "vm-01"), encode(order("vm-01", 1, 2, decider="operator")))
    await operator_nc.flush()
    await eventually(lambda: operator_errors, timeout=5, what="the broker refusing the operator a command")

    # a decider under auth reads the pauses too: it holds vm-01
    decider = start_service("decider", *LIVELY_DECIDER, env=credentials(out, "decider"))
    await eventually(lambda: held_paused(decider) >= 1, timeout=30, what="the decider holding vm-01 under auth")
    denied = await hotplug("resume", "vm-01", env=viewer)
    assert denied.returncode != 0 and "only the operator" in denied.stderr
    resumed = await hotplug("resume", "vm-01", env=operator)
    assert resumed.returncode == 0, resumed.stderr
    events = await hotplug("events", "--format", "jsonl", env=viewer)
    kinds = [(r["kind"], r["by"]) for r in map(json.loads, events.stdout.splitlines()) if "by" in r]
    assert kinds == [("pause", "operator"), ("resume", "operator")]
    for client in (decider_nc, operator_nc, viewer_nc):
        with contextlib.suppress(nats.errors.Error):
            await client.close()


def until_of(printed: str) -> float:
    """The end of the pause ``hotplug pause`` printed ("... until 2026-11-25 18:40:01 UTC ...")."""
    text = printed.split(" until ", 1)[1][:23]
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=dt.UTC).timestamp() + 1.0


async def stored_pause(nc: Client, vm: str) -> bool:
    """Whether the pause bucket still stores an entry for the VM (expired or not)."""
    kv = await pause_bucket.open_bucket(nc.jetstream())
    return await pause_bucket.entry(kv, "local", vm) is not None


async def _first_result(watch: Recorder, vm: str) -> ScaleResult:
    await eventually(lambda: [r for r in watch.results if r.vm == vm], what=f"a result for {vm}")
    return next(r for r in watch.results if r.vm == vm)
