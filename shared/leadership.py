"""The leadership record deciders keep and actuators read: JetStream KV bucket ``hotplug_leases``, one key per
lease, value a JSON ``LeaseState``. See ``services.decider.lease`` for how replicas take and keep it."""

from __future__ import annotations

import msgspec

from shared import topology

LEASE_BUCKET = topology.LEASES_BUCKET


class LeaseState(msgspec.Struct, frozen=True):
    holder: str
    term: int
    expires_at: float
