"""Buckets read key by key (``shared.bus.current_entries``) against a real nats-server, each under the user that
reads it in a deployment (``hotplug auth``): a restarted actuator finds every progress marker its host's dead
actuator left and nothing else, even when nats-py's watch would have said "all in" before handing a marker over
(nats-io/nats.py#842); an actuator reads the lease terms; a decider lists its group's members."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from hotplug import auth
from hotplug.harness.faults import order
from services.actuator.progress import ProgressLog
from services.decider.sharding import MEMBER_TTL_S, MEMBERS_BUCKET
from shared import bus, topology
from shared.broker import EmbeddedBroker, free_port
from shared.leadership import LEASE_BUCKET, LeaseState
from tests.early_watch import watch_saying_all_in_first


@pytest.fixture
async def actuators(tmp_path: Path) -> AsyncIterator[dict[str, Client]]:
    """A broker under ``hotplug auth``'s config, and a connection as each host's actuator user and as the decider
    user (keyed by host, and "decider")."""
    port = free_port()
    auth.write(tmp_path / "auth", ["local", "h2"], "127.0.0.1", [port], tls=False)
    with EmbeddedBroker(tmp_path / "nats", port=port, config_file=tmp_path / "auth" / "nats.conf"):
        clients = {}
        try:
            users = {host: topology.host_user("actuator", host) for host in ("local", "h2")}
            for key, user in {**users, "decider": topology.DECIDER_USER}.items():
                env = (tmp_path / "auth" / "credentials" / f"{user}.env").read_text()
                url = env.split("=", 1)[1].strip()
                clients[key] = await bus.connect(url, user, forever=False)
            yield clients
        finally:
            for nc in clients.values():
                await nc.close()


async def test_a_restarted_actuator_finds_its_hosts_markers_left_and_not_those_removed_or_another_hosts(
    actuators: dict[str, Client],
) -> None:
    local = await ProgressLog.open(actuators["local"].jetstream(), "local")
    other = await ProgressLog.open(actuators["h2"].jetstream(), "h2")
    first, second, answered = (
        order("local", "vm-01", 2, 1),
        order("local", "vm.02 *", 4, 3),  # a name keys may not hold as it is
        order("local", "vm-03", 3, 2),
    )
    elsewhere = order("h2", "vm-01", 2, 1)
    await local.begin(first, 1)
    await local.begin(second, 3)
    await local.begin(answered, 2)
    await local.end(answered)  # its result is stored
    await other.begin(elsewhere, 1)

    restarted = await ProgressLog.open(actuators["local"].jetstream(), "local")
    found = {(m.command, m.before) for m in await restarted.left_over()}

    assert found == {(first, 1), (second, 3)}
    assert [m.command for m in await other.left_over()] == [elsewhere]


async def test_a_marker_is_found_when_a_watch_would_have_said_all_in_first(
    actuators: dict[str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch here says "all in" before it hands anything over, as nats-py's may (nats-io/nats.py#842): a
    marker read that way would be missed, and the change its command made reported by no result."""
    log = await ProgressLog.open(actuators["local"].jetstream(), "local")
    left = order("local", "vm-01", 2, 1)
    await log.begin(left, 1)
    looked = watch_saying_all_in_first(monkeypatch)
    try:
        found = [m.command for m in await log.left_over()]
    finally:
        looked.set()
    assert found == [left]


async def test_an_actuator_reads_the_lease_terms_and_a_decider_its_groups_members(
    actuators: dict[str, Client],
) -> None:
    decider = actuators["decider"].jetstream()
    leases = await bus.key_value(decider, LEASE_BUCKET)
    await leases.put("group-a", msgspec.json.encode(LeaseState("d1", 3, 1e12)))
    await leases.put("group-b", msgspec.json.encode(LeaseState("d2", 1, 1e12)))
    await leases.delete("group-b")  # released
    members = await bus.key_value(decider, MEMBERS_BUCKET, ttl_s=MEMBER_TTL_S)
    await members.put("group-a.m1", b"1")
    await members.put("group-a.m2", b"1")

    actuator = actuators["local"].jetstream()
    terms = await bus.current_entries(actuator, await actuator.key_value(LEASE_BUCKET), LEASE_BUCKET)
    listed = await bus.current_entries(decider, members, MEMBERS_BUCKET)

    assert {name: msgspec.json.decode(value, type=LeaseState).term for name, value in terms.items()} == {"group-a": 3}
    assert sorted(listed) == ["group-a.m1", "group-a.m2"]
