"""Broker security from ``hotplug auth init``: the loop runs with one user per service, and only the decider
user may publish commands; the broker refuses everyone else (real nats-server with the generated config)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from hotplug.harness.processes import run_hotplug
from hotplug.harness.recorder import Recorder
from shared import bus, subjects, topology
from shared.broker import EmbeddedBroker, find_nats_server, free_port
from shared.codec import encode
from shared.eventlog import read_events
from shared.messages import ScaleCommand, ScaleResult
from tests.conftest import LIVELY_DECIDER, ServiceProcess, eventually
from tests.system.test_faults import order


def credentials(out: Path, user: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (out / "credentials" / f"{user}.env").read_text().splitlines() if line)
    return dict(pairs)


def auth_init(out: Path, port: int, *extra: str) -> None:
    done = run_hotplug("auth", "init", "--out", str(out), "--hosts", "local,h2", "--port", str(port), *extra)
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def secured_broker(tmp_path: Path, *auth_args: str) -> Iterator[tuple[Path, EmbeddedBroker]]:
    """A nats-server under the config of ``hotplug auth init *auth_args``, its streams made by the admin user."""
    port = free_port()
    out = tmp_path / "auth"
    auth_init(out, port, *auth_args)
    check = subprocess.run(
        [find_nats_server(), "-t", "-c", str(out / "nats.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert oct((out / "credentials" / "decider.env").stat().st_mode)[-3:] == "600"
    with EmbeddedBroker(tmp_path / "nats", port=port, config_file=out / "nats.conf") as broker:
        streams = run_hotplug("streams", env=credentials(out, "admin"))
        assert streams.returncode == 0, streams.stderr
        yield out, broker


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[Path, EmbeddedBroker]]:
    with secured_broker(tmp_path) as found:
        yield found


async def connect_as(out: Path, user: str, errors: list[str]) -> Client:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(
        credentials(out, user)["HOTPLUG_NATS_URL"], error_cb=on_error, max_reconnect_attempts=1, reconnect_time_wait=0.1
    )


async def test_the_loop_runs_with_one_user_per_service_and_only_the_decider_commands(
    secured: tuple[Path, EmbeddedBroker], start_service: Callable[..., ServiceProcess]
) -> None:
    out, _ = secured
    for service, user in (
        ("simulator", "simulator-local"),
        ("collector", "collector-local"),
        ("actuator", "actuator-local"),
        ("decider", "decider"),
    ):
        extra = {"simulator": ["--vms", "4"], "decider": LIVELY_DECIDER}.get(service, [])
        start_service(service, "--speed", "4", *extra, env=credentials(out, user))
    viewer_errors: list[str] = []
    viewer = await connect_as(out, "viewer", viewer_errors)
    watch = Recorder()
    await watch.attach(viewer, samples=False, commands=False)
    host_states: list[str] = []

    async def on_host_state(msg: Msg) -> None:
        host_states.append(msg.subject)

    await viewer.subscribe(subjects.ALL_HOSTS, cb=on_host_state)
    results = watch.results
    await eventually(lambda: any(r.ok for r in results), timeout=40, what="the secured loop acting")
    # the collector publishes its host's state, and the viewer may read it
    await eventually(lambda: host_states, timeout=10, what="the viewer hearing the collector's HostState")
    assert set(host_states) == {subjects.hosts("local")}
    pool = await asyncio.to_thread(run_hotplug, "pool", "--json", env=credentials(out, "viewer"))
    assert pool.returncode == 0, pool.stderr
    assert [(h["host"], h["reported"]) for h in json.loads(pool.stdout)["hosts"]] == [("local", True)]

    # anyone but the decider publishing an order is refused by the broker, and the order goes nowhere
    refused_ids = []
    for user in ("collector-local", "actuator-local", "viewer", "simulator-local", "agent-local"):
        errors: list[str] = []
        client = await connect_as(out, user, errors)
        command = order("vm-01", 4, 2, decider=user)
        refused_ids.append(command.id)
        await client.publish(subjects.commands("local", "vm-01"), encode(command))
        await client.flush()
        await eventually(lambda: errors, timeout=5, what=f"the broker refusing {user}")  # noqa: B023
        assert "permissions violation for publish" in errors[0].lower()
        await client.close()
    # a collector may publish its own host's metrics and state only
    for subject in (subjects.metrics("local", "vm-01"), subjects.hosts("local")):
        errors = []
        client = await connect_as(out, "collector-h2", errors)
        await client.publish(subject, b"{}")
        await client.flush()
        await eventually(lambda: errors, timeout=5, what=f"the broker refusing another host's {subject}")  # noqa: B023
        await client.close()
    logged: list[ScaleCommand] = []

    async def commands_logged() -> bool:
        logged[:] = [e async for _, e in read_events(viewer.jetstream()) if isinstance(e, ScaleCommand)]
        return bool(logged)

    await eventually(commands_logged, timeout=30, what="the decider's commands in the event log")
    assert {c.decider for c in logged} == {"decider"}
    assert not {r.command_id for r in results} & set(refused_ids)
    await viewer.close()


async def test_every_service_runs_under_its_own_user_with_a_non_default_name(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    """Permissions follow a service's real name: an actuator started as ``--name edge`` takes its commands through
    the consumer ``edge-local`` that ``hotplug auth init --actuator-names edge`` grants, and the loop goes round."""
    with secured_broker(tmp_path, "--actuator-names", "edge,actuator") as (out, _):
        start_service("simulator", "--speed", "4", "--vms", "4", env=credentials(out, "simulator-local"))
        start_service("collector", "--speed", "4", env=credentials(out, "collector-local"))
        actuator = start_service("actuator", "--speed", "4", "--name", "edge", env=credentials(out, "actuator-local"))
        start_service("decider", "--speed", "4", "--name", "brain", *LIVELY_DECIDER, env=credentials(out, "decider"))
        viewer = await connect_as(out, "viewer", [])
        watch = Recorder()
        await watch.attach(viewer, samples=False, commands=False)
        results = watch.results
        await eventually(lambda: any(r.ok for r in results), timeout=40, what="the loop acting under the new names")
        done = next(r for r in results if r.ok)
        assert done.actuator == "edge"
        logged = [e async for _, e in read_events(viewer.jetstream()) if isinstance(e, ScaleCommand)]
        assert done.command_id in {c.id for c in logged}
        assert {c.decider for c in logged} == {"brain"}
        durable = topology.actuator_consumer("edge", "local")
        info = await viewer.jetstream().consumer_info(topology.EVENTS_STREAM, durable)
        assert info.config.filter_subject == subjects.host_commands("local")
        assert info.delivered.stream_seq > 0  # the commands came through the consumer of the real name
        assert "permissions violation" not in actuator.log().lower()
        await viewer.close()


def default_reader(host: str) -> str:
    """The consumer through which the actuator of ``host`` with the default --name reads back its results."""
    return topology.actuator_log_reader(topology.actuator_consumer(topology.ACTUATOR_NAME, host))


def stored_result(host: str) -> ScaleResult:
    return ScaleResult(
        command_id=f"c-{host}",
        time=time.time(),
        host=host,
        vm="vm-01",
        ok=True,
        vcpus_before=2,
        vcpus_after=3,
        target_vcpus=3,
        duration_s=0.1,
        actuator="actuator",
    )


async def test_an_actuator_reads_back_its_own_hosts_results_and_no_others(secured: tuple[Path, EmbeddedBroker]) -> None:
    """At startup an actuator reads back the commands it has answered; its user may do that under one consumer
    name, filtered to its own host's results."""
    out, _ = secured
    admin = await connect_as(out, "admin", [])
    for host in ("local", "h2"):
        await admin.jetstream().publish(subjects.results(host, "vm-01"), encode(stored_result(host)))
    await admin.close()
    errors: list[str] = []
    actuator = await connect_as(out, "actuator-local", errors)
    js = actuator.jetstream(timeout=1.0)
    own = [
        subject
        async for subject, _ in bus.read_stream(
            js, topology.EVENTS_STREAM, [f"{subjects.RESULTS}.local.>"], name=default_reader("local")
        )
    ]
    assert own == [subjects.results("local", "vm-01")]
    for reader in (default_reader("local"), default_reader("h2")):
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):  # refused: the request gets no answer
            [_ async for _ in bus.read_stream(js, topology.EVENTS_STREAM, [f"{subjects.RESULTS}.h2.>"], name=reader)]
    await eventually(lambda: errors, timeout=5, what="the broker refusing another host's results")
    assert "permissions violation" in errors[0].lower()
    await actuator.close()


async def test_wrong_password_is_refused(secured: tuple[Path, EmbeddedBroker]) -> None:
    out, _ = secured
    url = credentials(out, "decider")["HOTPLUG_NATS_URL"]
    user_part, host_part = url.rsplit("@", 1)
    with pytest.raises(Exception, match=r"Authorization|NoServers|nats: "):
        await nats.connect(
            user_part.rsplit(":", 1)[0] + ":wrong@" + host_part,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            connect_timeout=2,
            allow_reconnect=False,
        )


async def test_tls_with_the_generated_ca(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "auth"
    auth_init(out, port, "--tls")
    with EmbeddedBroker(tmp_path / "nats", port=port, config_file=out / "nats.conf"):
        env = credentials(out, "viewer")
        assert env["HOTPLUG_NATS_URL"].startswith("tls://")
        from shared import bus

        os.environ[bus.CA_ENV] = env["HOTPLUG_NATS_CA"]
        try:
            client = await bus.connect(env["HOTPLUG_NATS_URL"], "tls-test", forever=False)
            assert client.is_connected
            await client.close()
        finally:
            del os.environ[bus.CA_ENV]
        with pytest.raises(Exception):  # noqa: B017,PT011 (any failure will do: no CA, no trust)
            await nats.connect(
                env["HOTPLUG_NATS_URL"],
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                connect_timeout=2,
                allow_reconnect=False,
            )
