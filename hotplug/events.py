"""Where a run's event log is (a live run's broker, or a private one on its data dir) and how it is printed; the
reading itself is ``shared.eventlog``'s.

With ``--data-dir`` the log of a run that has stopped is read by starting a private broker on that data
dir; if the run is still going (its ``broker.json`` names a live process) its broker is used instead.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.cluster import embedded_broker, nodes_in
from shared.errors import NotFound
from shared.eventlog import AnyEvent
from shared.messages import Deferral, PauseEvent, Resource, ScaleCommand
from shared.units import format_size

BROKER_FILE = "broker.json"
BROKER_DIR = "nats"


def write_broker_file(data_dir: Path, url: str, pid: int) -> None:
    (data_dir / BROKER_FILE).write_text(json.dumps({"url": url, "pid": pid}))


def live_broker_url(data_dir: Path) -> str | None:
    """The URL of the broker of a run still using ``data_dir``, if any."""
    try:
        info = json.loads((data_dir / BROKER_FILE).read_text())
        os.kill(int(info["pid"]), 0)
        return str(info["url"])
    except (FileNotFoundError, ValueError, KeyError, ProcessLookupError, PermissionError):
        return None


@contextlib.contextmanager
def broker_for(data_dir: Path) -> Iterator[str]:
    """A NATS URL serving ``data_dir``'s event log: the live run's, or a private broker for the duration."""
    url = live_broker_url(data_dir)
    if url is not None:
        yield url
        return
    if not (data_dir / BROKER_DIR).is_dir():
        raise NotFound(f"no event log in {data_dir} (expected {data_dir / BROKER_DIR}/)")
    broker = embedded_broker(data_dir / BROKER_DIR, nodes_in(data_dir / BROKER_DIR))
    try:
        yield broker.start()
    finally:
        broker.stop()


def event_record(event: AnyEvent) -> dict[str, Any]:
    """The flat JSON Lines / CSV record of one event."""
    if isinstance(event, Deferral):
        return {
            "kind": "deferral",
            "action": event.action.value,
            "time": event.time,
            "host": event.host,
            "vm": event.vm,
            "decider": event.decider,
            "resource": event.resource.value,
            "vcpus": event.vcpus,
            "wanted_vcpus": event.wanted_vcpus,
            "granted_vcpus": event.granted_vcpus,
            "memory_bytes": event.memory_bytes,
            "wanted_memory_bytes": event.wanted_memory_bytes,
            "granted_memory_bytes": event.granted_memory_bytes,
            "since": event.since,
            "priority": event.priority,
            "reason": event.reason,
        }
    if isinstance(event, PauseEvent):
        return {
            "kind": event.action.value,
            "time": event.time,
            "host": event.host,
            "vm": event.vm,
            "id": event.id,
            "by": event.by,
            "reason": event.reason,
            "until": event.until,
        }
    if isinstance(event, ScaleCommand):
        return {
            "kind": "command",
            "time": event.time,
            "host": event.host,
            "vm": event.vm,
            "id": event.id,
            "resource": event.resource.value,
            "target_vcpus": event.target_vcpus,
            "seen_vcpus": event.seen_vcpus,
            "target_memory_bytes": event.target_memory_bytes,
            "seen_memory_bytes": event.seen_memory_bytes,
            "decider": event.decider,
            "reason": event.reason,
            "expires_at": event.expires_at,
            "sample_time": event.sample_time,
        }
    return {
        "kind": "result",
        "time": event.time,
        "host": event.host,
        "vm": event.vm,
        "command_id": event.command_id,
        "ok": event.ok,
        "resource": event.resource.value,
        "vcpus_before": event.vcpus_before,
        "vcpus_after": event.vcpus_after,
        "target_vcpus": event.target_vcpus,
        "memory_before_bytes": event.memory_before_bytes,
        "memory_after_bytes": event.memory_after_bytes,
        "target_memory_bytes": event.target_memory_bytes,
        "error_code": event.error_code.value if event.error_code else None,
        "error": event.error,
        "duration_s": event.duration_s,
        "actuator": event.actuator,
    }


CSV_FIELDS = [
    "kind",
    "time",
    "host",
    "vm",
    "id",
    "command_id",
    "resource",
    "target_vcpus",
    "seen_vcpus",
    "target_memory_bytes",
    "seen_memory_bytes",
    "decider",
    "reason",
    "ok",
    "vcpus_before",
    "vcpus_after",
    "memory_before_bytes",
    "memory_after_bytes",
    "error_code",
    "error",
    "duration_s",
    "by",
    "until",
    "action",
    "vcpus",
    "wanted_vcpus",
    "granted_vcpus",
    "memory_bytes",
    "wanted_memory_bytes",
    "granted_memory_bytes",
    "since",
    "priority",
]


def format_jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def format_csv(records: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


def change_text(record: dict[str, Any]) -> str:
    """A command's, a result's or a deferral's record's change as people read it: ``2→4`` (vCPUs), ``4GiB→6GiB``
    (memory; a deferral's: the size then and the size wanted)."""
    memory = record.get("resource") == Resource.MEMORY.value
    if record["kind"] == "deferral":
        keys = ("memory_bytes", "wanted_memory_bytes") if memory else ("vcpus", "wanted_vcpus")
    elif record["kind"] == "command":
        keys = ("seen_memory_bytes", "target_memory_bytes") if memory else ("seen_vcpus", "target_vcpus")
    else:
        keys = ("memory_before_bytes", "memory_after_bytes") if memory else ("vcpus_before", "vcpus_after")
    before, after = (record.get(key) for key in keys)
    if memory:
        return f"{_size(before)}→{_size(after)}"
    return f"{before}→{after}"


def _size(value: object) -> str:
    return format_size(value) if isinstance(value, int) else str(value)
