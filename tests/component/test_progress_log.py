"""The actuator's progress markers against a real nats-server, under the actuator's own user: what a restarted
actuator finds is every marker its host's dead actuator left, and nothing else, even when nats-py's watch would
have said "all in" before handing a marker over (nats-io/nats.py#842)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from hotplug import auth
from services.actuator.progress import ProgressLog
from shared import bus, topology
from shared.broker import EmbeddedBroker, free_port
from shared.messages import ScaleCommand
from tests.early_watch import watch_saying_all_in_first


def order(command_id: str, vm: str, host: str = "local") -> ScaleCommand:
    return ScaleCommand(
        id=command_id,
        time=0.0,
        host=host,
        vm=vm,
        target_vcpus=2,
        seen_vcpus=1,
        decider="test",
        reason="test",
        expires_at=1e12,
    )


@pytest.fixture
async def actuators(tmp_path: Path) -> AsyncIterator[dict[str, Client]]:
    """A broker under ``hotplug auth``'s config, and a connection as each host's actuator user."""
    port = free_port()
    auth.write(tmp_path / "auth", ["local", "h2"], "127.0.0.1", [port], tls=False)
    with EmbeddedBroker(tmp_path / "nats", port=port, config_file=tmp_path / "auth" / "nats.conf"):
        clients = {}
        try:
            for host in ("local", "h2"):
                user = topology.host_user("actuator", host)
                env = (tmp_path / "auth" / "credentials" / f"{user}.env").read_text()
                url = env.split("=", 1)[1].strip()
                clients[host] = await bus.connect(url, user, forever=False)
            yield clients
        finally:
            for nc in clients.values():
                await nc.close()


async def test_a_restarted_actuator_finds_its_hosts_markers_left_and_not_those_removed_or_another_hosts(
    actuators: dict[str, Client],
) -> None:
    local = await ProgressLog.open(actuators["local"].jetstream(), "local")
    other = await ProgressLog.open(actuators["h2"].jetstream(), "h2")
    await local.begin(order("c1", "vm-01"), 1)
    await local.begin(order("c2", "vm.02 *"), 3)  # a name keys may not hold as it is
    await local.begin(order("c3", "vm-03"), 2)
    await local.end(order("c3", "vm-03"))  # its result is stored
    await other.begin(order("c4", "vm-01", host="h2"), 1)

    restarted = await ProgressLog.open(actuators["local"].jetstream(), "local")
    found = {(m.command.id, m.command.vm, m.before) for m in await restarted.left_over()}

    assert found == {("c1", "vm-01", 1), ("c2", "vm.02 *", 3)}
    assert [m.command.id for m in await other.left_over()] == ["c4"]


async def test_a_marker_is_found_when_a_watch_would_have_said_all_in_first(
    actuators: dict[str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch here says "all in" before it hands anything over, as nats-py's may (nats-io/nats.py#842): a
    marker read that way would be missed, and the change its command made reported by no result."""
    log = await ProgressLog.open(actuators["local"].jetstream(), "local")
    await log.begin(order("c1", "vm-01"), 1)
    looked = watch_saying_all_in_first(monkeypatch)
    try:
        found = [m.command.id for m in await log.left_over()]
    finally:
        looked.set()
    assert found == ["c1"]
