"""What ``hotplug pool`` shows: each host's capacity, what is committed and used on it (its memory too, where its
source reports it), the jobs waiting to start, and the grows deferred now with their age and reason, as text or as
JSON. Pure: fed the HostStates heard and the Deferral events read (``hotplug.pool``).

A VM's grow of a resource (vCPUs, memory) is deferred now when its newest Deferral of that resource says
``deferred``. Ages are on the shared clock, as
``since`` is: measured from the host's HostState (its collector's clock), or, for a host that sent none, from the
newest of ``now`` and that host's Deferral events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from shared.messages import Deferral, DeferralAction, HostState, Resource
from shared.units import format_size

STATE_FIELDS = (
    "time",
    "source",
    "cpus",
    "capacity_vcpus",
    "committed_vcpus",
    "free_vcpus",
    "watermark",
    "used_cores",
    "host_wait_cores",
    "waiting_vms",
    "waiting_vcpus",
    "next_waiting_vcpus",
    "memory_bytes",
    "capacity_memory_bytes",
    "committed_memory_bytes",
)


def deferred_now(deferrals: Iterable[Deferral]) -> list[Deferral]:
    """The grows deferred now: each VM's newest Deferral of each resource, where it says ``deferred``; by host,
    oldest first."""
    newest: dict[tuple[str, str, Resource], Deferral] = {}
    for d in deferrals:
        seen = newest.get((d.host, d.vm, d.resource))
        if seen is None or d.time >= seen.time:
            newest[(d.host, d.vm, d.resource)] = d
    now = [d for d in newest.values() if d.action is DeferralAction.DEFERRED]
    return sorted(now, key=lambda d: (d.host, d.since, d.vm))


def age(seconds: float) -> str:
    """A duration as an operator reads it: 45s, 3m20s, 1h05m, 2d03h."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def deferral_detail(record: Mapping[str, Any]) -> str:
    """One Deferral event's detail for ``hotplug events`` (from its record in ``hotplug.events``)."""
    action = record["action"]
    if record.get("resource") == Resource.MEMORY.value:
        wanted, granted = format_size(record["wanted_memory_bytes"]), format_size(record["granted_memory_bytes"])
        unit = "of memory"
    else:
        wanted, granted, unit = record["wanted_vcpus"], record["granted_vcpus"], "vCPUs"
    since = f"deferred since {_clock(float(record['since']))}"
    if action == DeferralAction.DEFERRED.value:
        head = f"{granted} of {wanted} {unit} granted, priority {record['priority']}"
    elif action == DeferralAction.GRANTED.value:
        head = f"all {wanted} {unit} granted, {since}"
    else:
        head = f"no longer wants {wanted} {unit}, {since}"
    reason = f": {record['reason']}" if record["reason"] else ""
    return f"{head} (by {record['decider']}){reason}"


def pool_report(
    states: Mapping[str, HostState],
    deferrals: Iterable[Deferral],
    *,
    expected: Iterable[str] = (),
    wait_s: float,
    waited_s: float,
    now: float,
) -> dict[str, Any]:
    """The JSON document of ``hotplug pool --json``: every host heard from, expected (``expected``) or with a grow
    deferred now, by name. ``deferrals`` are Deferral events in any order (only the newest of a VM counts);
    ``wait_s`` is the longest it would wait for a host's state, ``waited_s`` how long it did."""
    deferred = deferred_now(deferrals)
    hosts = sorted(set(states) | set(expected) | {d.host for d in deferred})
    out = []
    for host in hosts:
        state = states.get(host)
        mine = [d for d in deferred if d.host == host]
        clock_now = state.time if state is not None else max([now, *(d.time for d in mine)])
        entry: dict[str, Any] = {"host": host, "reported": state is not None}
        entry.update({name: getattr(state, name) if state is not None else None for name in STATE_FIELDS})
        entry["deferred"] = [
            {
                "vm": d.vm,
                "resource": d.resource.value,
                "vcpus": d.vcpus,
                "wanted_vcpus": d.wanted_vcpus,
                "granted_vcpus": d.granted_vcpus,
                "memory_bytes": d.memory_bytes,
                "wanted_memory_bytes": d.wanted_memory_bytes,
                "granted_memory_bytes": d.granted_memory_bytes,
                "since": d.since,
                "age_s": round(max(0.0, clock_now - d.since), 3),
                "priority": d.priority,
                "decider": d.decider,
                "reason": d.reason,
            }
            for d in mine
        ]
        out.append(entry)
    return {"wait_s": wait_s, "waited_s": round(waited_s, 3), "hosts": out}


def _cores(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def _host_lines(entry: Mapping[str, Any], wait_s: float) -> list[str]:
    host = entry["host"]
    if not entry["reported"]:
        lines = [
            f"{host}: no HostState within {wait_s:g} s (is its collector running, and does its source read the "
            "host? a plug-in source may not)"
        ]
    else:
        waiting = f"{entry['waiting_vms']} job{'s' if entry['waiting_vms'] != 1 else ''} waiting"
        if entry["waiting_vms"]:
            waiting += f" for {entry['waiting_vcpus']} vCPUs (next {entry['next_waiting_vcpus'] or '?'})"
        lines = [
            f"{host} ({entry['source']}, {_clock(entry['time'])}): {entry['cpus']} CPUs, capacity "
            f"{entry['capacity_vcpus']} vCPUs, committed {entry['committed_vcpus']}, free {entry['free_vcpus']}",
            f"  used {_cores(entry['used_cores'])} cores, host wait {_cores(entry['host_wait_cores'])} cores, "
            + waiting,
        ]
        if entry["capacity_memory_bytes"] is not None:  # a source that reports the host's memory
            capacity, committed = entry["capacity_memory_bytes"], entry["committed_memory_bytes"] or 0
            lines.append(
                f"  memory {format_size(entry['memory_bytes'] or 0)}, capacity {format_size(capacity)}, "
                f"committed {format_size(committed)}, free {format_size(capacity - committed)}"
            )
    rows = entry["deferred"]
    if not rows:
        lines.append("  no grow deferred")
        return lines
    lines.append(f"  {len(rows)} grow{'s' if len(rows) != 1 else ''} deferred:")
    for d in rows:
        reason = f": {d['reason']}" if d["reason"] else ""
        if d["resource"] == Resource.MEMORY.value:
            now, wanted = format_size(d["memory_bytes"]), format_size(d["wanted_memory_bytes"])
            change = f"{now} -> {wanted} of memory wanted, {format_size(d['granted_memory_bytes'])} granted"
        else:
            change = f"{d['vcpus']} -> {d['wanted_vcpus']} vCPUs wanted, {d['granted_vcpus']} granted"
        lines.append(f"    {d['vm']}  {change}, for {age(d['age_s'])}, priority {d['priority']}{reason}")
    return lines


def render_text(report: Mapping[str, Any]) -> str:
    """The report as ``hotplug pool`` prints it."""
    hosts: Sequence[Mapping[str, Any]] = report["hosts"]
    wait_s = float(report["wait_s"])
    if not hosts:
        return (
            f"no host reported within {wait_s:g} s (no HostState on hotplug.hosts.*) and no grow is deferred: is a "
            "collector running, with a source that reads its host?\n"
        )
    return "".join(line + "\n" for entry in hosts for line in _host_lines(entry, wait_s))
