"""Every name the deployment puts on the broker besides the subjects: streams, KV buckets, consumers, users.

Each is declared once here, with how it derives from a host and a service's ``--name``; the services,
``hotplug streams`` and ``hotplug auth`` all read them from here, so a permission always names what the service
really uses. The wire subjects are the other half, in ``shared.subjects``.

Service names matter to permissions only where a broker user is confined to one consumer: each actuator reads
its host's commands through the consumer ``<name>-<host>`` and reads its results back through
``<name>-<host>-recall``, so ``hotplug auth init --actuator-names`` must list the ``--name`` of every actuator it
grants (``actuator`` by default). A decider's user may use any consumer name, so decider names need no telling.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

_NAME = re.compile(r"[A-Za-z0-9_-]+")

# ---- streams -------------------------------------------------------------------------------------------------
EVENTS_STREAM = "HOTPLUG_EVENTS"  # every command and result (shared.bus.stream_configs: subjects and limits)
METRICS_STREAM = "HOTPLUG_METRICS"  # samples by partition, and shadow deciders' proposals

# ---- KV buckets ----------------------------------------------------------------------------------------------
LEASES_BUCKET = "hotplug_leases"  # decider leadership (shared.leadership); actuators read it for the term check
DECIDER_MEMBERS_BUCKET = "hotplug_deciders"  # live members of each decider group (services.decider.sharding)
DECIDER_STATE_BUCKET = "hotplug_decider_state"  # per-VM decision state a group's new owner resumes from
ACTUATOR_PROGRESS_BUCKET = "hotplug_actuator_progress"  # commands under way (services.actuator.progress)
PAUSES_BUCKET = "hotplug_pauses"  # paused VMs (shared.pauses): operators write it, deciders and actuators read it
# A new bucket is declared above and added to the tuple of each role that writes it (hotplug.auth grants them).
DECIDER_BUCKETS = (LEASES_BUCKET, DECIDER_MEMBERS_BUCKET, DECIDER_STATE_BUCKET)


def kv_stream(bucket: str) -> str:
    """The stream JetStream keeps a KV bucket in."""
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str = ">") -> str:
    """The subject a KV entry is written on (``>``: every key of the bucket)."""
    return f"$KV.{bucket}.{key}"


def progress_key(host: str, vm: str) -> str:
    """The progress marker of a VM of a host; VM names may hold characters keys may not, so they are hashed."""
    return f"{host}.{hashlib.sha256(vm.encode()).hexdigest()[:32]}"


def progress_keys(host: str) -> str:
    """Every progress marker of one host: what its actuator may write and settle."""
    return f"{host}.>"


def valid_name(name: str) -> bool:
    """Whether a host or service name can be part of a consumer name and a subject token (no ``.``, ``*``, ``>``,
    white space): the permissions derived from it then confine what they should."""
    return _NAME.fullmatch(name) is not None


# ---- services and their consumers ----------------------------------------------------------------------------
ACTUATOR_NAME = "actuator"  # the default --name of `hotplug actuator`
DECIDER_NAME = "decider"  # the default --name of `hotplug decider`


def actuator_consumer(name: str, host: str) -> str:
    """The durable consumer through which the actuator called ``name`` takes ``host``'s commands."""
    return f"{name}-{host}"


def actuator_log_reader(consumer: str) -> str:
    """The consumer through which the actuator with command consumer ``consumer`` reads back its results."""
    return f"{consumer}-recall"


def decider_member_consumer(group: str, member: str) -> str:
    """The durable consumer of one member of a decider group on the metrics stream."""
    return f"decider-{group}-{member}"


# ---- broker users (hotplug auth init) ------------------------------------------------------------------------
ADMIN_USER = "admin"  # creates the streams (hotplug streams, hotplug up); operators
DECIDER_USER = "decider"  # every decider, whatever its --name
VIEWER_USER = "viewer"  # reads everything, publishes nothing
OPERATOR_USER = "operator"  # reads what a viewer reads; pauses and resumes VMs (hotplug pause)
HostRole = Literal["simulator", "collector", "agent", "actuator"]
HOST_ROLES: tuple[HostRole, ...] = ("simulator", "collector", "agent", "actuator")


def host_user(role: HostRole, host: str) -> str:
    """The user of a service confined to one host: ``<role>-<host>``; its credentials file bears this name."""
    return f"{role}-{host}"
