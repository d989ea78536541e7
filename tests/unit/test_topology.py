"""Names have one owner (shared.topology): the consumers a service really uses are the ones ``hotplug auth``
grants, whatever the service's ``--name``. The broker's subject matching is modelled here; the system tier
(tests/system/test_security.py) runs the same grants on a real nats-server."""

from __future__ import annotations

from typing import cast

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from hotplug import auth
from services.actuator.drivers.base import Driver
from services.actuator.service import Actuator, ActuatorConfig, ActuatorMetrics
from services.decider.sharding import ShardedIntake
from shared import subjects, topology
from shared.runtime import ServiceContext, ServiceOptions

EVENTS = topology.EVENTS_STREAM
API = "$JS.API"


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(want) == len(got)


def may_publish(user: auth.User, subject: str) -> bool:
    return any(matches(p, subject) for p in user.publish) and not any(matches(p, subject) for p in user.deny_publish)


def user_named(users: list[auth.User], name: str) -> auth.User:
    return next(u for u in users if u.name == name)


def actuator_durable(name: str, host: str) -> str:
    """The command consumer the actuator service itself names, for ``--name name --host host``."""
    options = ServiceOptions(name=name, nats_url="nats://unused", host=host)
    ctx = ServiceContext(
        options=options,
        nc=cast(Client, None),
        js=cast(JetStreamContext, None),
        metrics=ActuatorMetrics("actuator"),
    )
    return Actuator(ctx, cast(Driver, None), ActuatorConfig(name=name)).durable


def consumer_rights(durable: str, host: str) -> list[str]:
    """The API subjects an actuator uses through its consumers (services.actuator.service)."""
    reader = topology.actuator_log_reader(durable)
    return [
        f"{API}.CONSUMER.INFO.{EVENTS}.{durable}",
        f"{API}.CONSUMER.CREATE.{EVENTS}.{durable}.{subjects.host_commands(host)}",
        f"{API}.CONSUMER.MSG.NEXT.{EVENTS}.{durable}",
        f"$JS.ACK.{EVENTS}.{durable}.1.2.3.4.5.6",
        f"{API}.CONSUMER.CREATE.{EVENTS}.{reader}.{subjects.RESULTS}.{host}.>",
        f"{API}.CONSUMER.MSG.NEXT.{EVENTS}.{reader}",
        f"{API}.CONSUMER.DELETE.{EVENTS}.{reader}",
    ]


def test_the_matcher_follows_nats_wildcards() -> None:
    assert matches("a.*.c", "a.b.c")
    assert not matches("a.*.c", "a.b.b.c")
    assert matches("a.>", "a.b.c")
    assert not matches("a.>", "a")
    assert not matches("a.b", "a.b.c")


@pytest.mark.parametrize("names", [("actuator",), ("edge",), ("edge", "actuator")])
def test_each_named_actuator_may_use_the_consumers_it_really_names(names: tuple[str, ...]) -> None:
    users = auth.users(["local", "h2"], names)
    for host in ("local", "h2"):
        user = user_named(users, topology.host_user("actuator", host))
        for name in names:
            durable = actuator_durable(name, host)
            assert durable == topology.actuator_consumer(name, host)
            refused = [s for s in consumer_rights(durable, host) if not may_publish(user, s)]
            assert refused == [], f"{user.name} may not use {name}'s consumers: {refused}"


def test_an_actuator_user_gets_no_consumer_of_another_name_or_host() -> None:
    users = auth.users(["local", "h2"], ["edge"])
    local = user_named(users, topology.host_user("actuator", "local"))
    for durable, host in (
        (actuator_durable("actuator", "local"), "local"),  # a name auth was not told
        (actuator_durable("edge", "h2"), "h2"),  # another host's actuator
        (actuator_durable("edge", "h2"), "local"),  # another host's consumer, filtered on this host
    ):
        assert not any(may_publish(local, s) for s in consumer_rights(durable, host)), (durable, host)
    # nor may it take another host's commands under its own consumer name
    own = topology.actuator_consumer("edge", "local")
    assert not may_publish(local, f"{API}.CONSUMER.CREATE.{EVENTS}.{own}.{subjects.host_commands('h2')}")


def test_the_default_grants_are_the_default_names() -> None:
    default = auth.users(["local"])
    told = auth.users(["local"], [topology.ACTUATOR_NAME])
    assert [(u.name, u.publish, u.subscribe) for u in default] == [(u.name, u.publish, u.subscribe) for u in told]
    assert {u.name for u in default} == {
        topology.ADMIN_USER,
        topology.DECIDER_USER,
        topology.VIEWER_USER,
        topology.OPERATOR_USER,
        *(topology.host_user(role, "local") for role in topology.HOST_ROLES),
    }


@pytest.mark.parametrize("bad", ["a.b", "a*", ">", "a b", ""])
def test_a_name_that_is_not_one_token_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="actuator names"):
        auth.users(["local"], [bad])


def test_the_decider_user_may_keep_every_decider_bucket_and_group_consumer() -> None:
    decider = user_named(auth.users(["local"]), topology.DECIDER_USER)
    for bucket in topology.DECIDER_BUCKETS:
        assert may_publish(decider, f"{API}.STREAM.CREATE.{topology.kv_stream(bucket)}")
        assert may_publish(decider, topology.kv_subject(bucket, "g.member"))
    intake = ShardedIntake(cast(JetStreamContext, None), "g", "brain", cast_handler, cast_share)
    assert intake.durable == topology.decider_member_consumer("g", "brain")
    assert may_publish(decider, f"{API}.CONSUMER.CREATE.{topology.METRICS_STREAM}.{intake.durable}")
    assert not may_publish(decider, f"{API}.CONSUMER.DELETE.{EVENTS}.anything")
    assert may_publish(decider, subjects.deferrals("node1", "vm 1"))  # it records the grows it defers
    assert any(matches(p, subjects.hosts("node1")) for p in decider.subscribe)  # and plans from HostState


def test_an_actuator_writes_only_its_own_hosts_progress_markers() -> None:
    local = user_named(auth.users(["local", "h2"]), topology.host_user("actuator", "local"))
    bucket = topology.ACTUATOR_PROGRESS_BUCKET
    assert may_publish(local, topology.kv_subject(bucket, topology.progress_key("local", "vm.01 *")))
    assert not may_publish(local, topology.kv_subject(bucket, topology.progress_key("h2", "vm-01")))


def test_a_hosts_samples_are_stored_in_one_partition_so_one_group_member_plans_the_host() -> None:
    partitions = {subjects.stored_metrics("node7", f"vm {i}").split(".")[2] for i in range(50)}
    assert partitions == {str(subjects.partition_of("node7"))}
    assert len({subjects.partition_of(f"node{i}") for i in range(50)}) > 8  # hosts spread over the partitions
    assert "partition(16,1)" in subjects.PARTITIONED_METRICS  # the stream's transform hashes the host token alone


async def cast_handler(_subject: str, _data: bytes) -> None:
    return None


async def cast_share(_share: frozenset[int]) -> None:
    return None


def may_subscribe(user: auth.User, subject: str) -> bool:
    return any(matches(p, subject) for p in user.subscribe)


def test_host_states_come_from_their_own_hosts_collector_and_deferrals_from_deciders() -> None:
    users = auth.users(["local", "h2"])
    collector = user_named(users, topology.host_user("collector", "local"))
    assert may_publish(collector, subjects.hosts("local"))
    assert not may_publish(collector, subjects.hosts("h2"))
    assert not may_publish(collector, subjects.deferrals("local", "vm-01"))
    decider = user_named(users, topology.DECIDER_USER)
    assert may_publish(decider, subjects.deferrals("local", "vm.01 *"))
    assert may_publish(decider, subjects.deferrals("local", "vm.01 *", "memory"))
    assert not may_publish(decider, subjects.hosts("local"))
    assert may_subscribe(decider, subjects.hosts("h2"))
    for reader in (topology.VIEWER_USER, topology.OPERATOR_USER):
        user = user_named(users, reader)
        assert may_subscribe(user, subjects.hosts("local")) and may_subscribe(user, subjects.deferrals("h2", "a"))
        assert not may_publish(user, subjects.hosts("local")) and not may_publish(user, subjects.deferrals("h2", "a"))
    actuator = user_named(users, topology.host_user("actuator", "local"))
    assert may_subscribe(actuator, subjects.hosts("local")) and not may_subscribe(actuator, subjects.hosts("h2"))
    others: tuple[topology.HostRole, ...] = ("agent", "actuator", "simulator")
    for role in others:
        assert not may_publish(user_named(users, topology.host_user(role, "local")), subjects.hosts("local")), role
