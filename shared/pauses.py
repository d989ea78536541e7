"""Pausing autoscaling of one VM: the rules, pure (the bucket's I/O is in ``shared.pause_bucket``).

A pause is a ``PauseEvent`` (action ``pause``) kept as the value of the VM's key in the KV bucket ``hotplug_pauses``
while it lasts: who, when, why and until when. The decider holds a paused VM; the actuator refuses its commands
with ``paused``, so a decider that does not know of pauses still cannot move it.

Expiry: a pause with an end (``--for``) is no pause from ``until`` on, whoever looks and whether or not the entry
is still stored; the broker also drops the entry a little after its end (a per-message TTL), and ``hotplug paused``
deletes expired entries it meets. A pause without an end lasts until ``hotplug resume``. ``--for`` is at most
``MAX_PAUSE_S`` (30 days), so a slip of the keyboard cannot pause a VM for years; say no ``--for`` to mean it.

Times are wall-clock seconds: a pause is an operator's, in real time, even when a simulator runs faster.
Two operators pausing one VM: the last writer wins (one key per VM), and both pauses are in the event log.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable

from shared.messages import PauseAction, PauseEvent
from shared.subjects import vm_from_token, vm_token

PAUSE_BUCKET = "hotplug_pauses"
MAX_PAUSE_S = 30 * 86400.0
# The broker keeps an entry this long past its end, so no reader whose clock lags a little sees it vanish early.
TTL_MARGIN_S = 60.0

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``2h``, ``1.5d`` → seconds. ValueError for anything else, for zero, or beyond 30 days."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise ValueError(f"a duration is a number and a unit (s, m, h or d), e.g. 90s, 10m, 2h, 1d; not {text!r}")
    seconds = float(match[1]) * _UNITS[match[2]]
    if seconds <= 0:
        raise ValueError(f"a pause lasts more than 0 s, not {text!r}")
    if seconds > MAX_PAUSE_S:
        raise ValueError(f"--for is at most {MAX_PAUSE_S / 86400:.0f}d; leave it out to pause until resumed")
    return seconds


def key(host: str, vm: str) -> str:
    """The VM's key in the bucket: ``<host>.<vm token>``, with ``=`` for the token's ``%`` (not allowed in keys)."""
    return f"{host}.{vm_token(vm).replace('%', '=')}"


def host_keys(host: str) -> str:
    """The keys of one host's VMs (an actuator watches only its own)."""
    return f"{host}.>"


def parse_key(text: str) -> tuple[str, str]:
    """Inverse of :func:`key`: (host, vm). ValueError on other shapes."""
    host, dot, token = text.partition(".")
    if not dot or not host or not token or "." in token:
        raise ValueError(f"not a pause key: {text!r}")
    return host, vm_from_token(token.replace("=", "%"))


def active(pause: PauseEvent, now: float) -> bool:
    """Whether ``pause`` is in force at wall time ``now``: an expired pause is no pause."""
    return pause.action is PauseAction.PAUSE and (pause.until is None or now < pause.until)


def ttl_s(pause: PauseEvent, now: float) -> int | None:
    """Whole seconds the broker keeps the entry (its end plus a margin), or None: kept until resumed."""
    if pause.until is None:
        return None
    return max(1, math.ceil(pause.until - now + TTL_MARGIN_S))


def when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(pause: PauseEvent) -> str:
    """``paused by <user> until <time>: <reason>``: the decider's held reason and the actuator's refusal."""
    end = "until resumed" if pause.until is None else f"until {when(pause.until)}"
    return f"paused by {pause.by} {end}" + (f": {pause.reason}" if pause.reason else "")


def retry_at(pause: PauseEvent) -> float | None:
    """When asking again makes sense after a ``paused`` refusal: the pause's end, if it has one."""
    return pause.until


class PauseBook:
    """The pauses one service knows, by (host, VM), as the bucket's watch delivers them."""

    def __init__(self) -> None:
        self._pauses: dict[tuple[str, str], PauseEvent] = {}

    def put(self, pause: PauseEvent) -> None:
        """A pause stored (the newest for its VM: last writer wins)."""
        self._pauses[(pause.host, pause.vm)] = pause

    def remove(self, host: str, vm: str) -> PauseEvent | None:
        """The VM's entry deleted (resumed, or cleaned up after its end); the pause it held, if any."""
        return self._pauses.pop((host, vm), None)

    def paused(self, host: str, vm: str, now: float) -> PauseEvent | None:
        """The pause in force on the VM at ``now``, if any; an expired one is forgotten here."""
        pause = self._pauses.get((host, vm))
        if pause is None:
            return None
        if not active(pause, now):
            del self._pauses[(host, vm)]
            return None
        return pause

    def in_force(self, now: float) -> list[PauseEvent]:
        """Every pause in force at ``now``, by host and VM."""
        return sorted((p for p in self._pauses.values() if active(p, now)), key=lambda p: (p.host, p.vm))

    def count(self, now: float) -> int:
        return sum(1 for p in self._pauses.values() if active(p, now))


def split_expired(pauses: Iterable[PauseEvent], now: float) -> tuple[list[PauseEvent], list[PauseEvent]]:
    """(in force, expired) at ``now``, each by host and VM."""
    ordered = sorted(pauses, key=lambda p: (p.host, p.vm))
    return [p for p in ordered if active(p, now)], [p for p in ordered if not active(p, now)]
