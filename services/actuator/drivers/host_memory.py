"""The memory half of a real driver's host view (``HostView.memory_bytes`` and ``vm_memory``): the host's memory and
what every running VM holds, or none at all when the host's or any running VM's could not be read, logged.

A sum that left one VM out would say the host has room it does not have, and the actuator would grant a grow the
host cannot hold; a view with no memory leaves the host's memory unarbitrated for that view instead (the vCPUs are
still judged). The host view is read every few seconds and before each grow, so the reason is logged once when it
starts (and again when it changes), and once when the memory is read again: not at every view.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from services.actuator.drivers.base import HostView
from shared.host_memory import host_memory

log = logging.getLogger(__name__)


class HostMemory:
    """Makes one driver's host views from its readings, and says when (and why) they carry no memory."""

    def __init__(self, driver: str) -> None:
        self.driver = driver
        self._gap: tuple[bool, tuple[str, ...]] | None = None  # what was missing in the last view; None: nothing

    def view(
        self,
        cpus: int,
        vms: dict[str, int],
        memory_bytes: int | None,
        held: Mapping[str, int | None],
        why: Mapping[str, str] | None = None,
    ) -> HostView:
        """The host view of ``cpus`` and ``vms`` (online vCPUs) with the host's memory (None: not read) and what each
        running VM holds (``held``, bytes, one entry per running VM; None: not read, with ``why`` where known)."""
        total, vm_memory = host_memory(memory_bytes, held, held)
        self._say(memory_bytes is None, sorted(vm for vm, size in held.items() if size is None), why or {})
        return HostView(
            cpus=cpus,
            vms=vms,
            memory_bytes=total,
            vm_memory=vm_memory or {},
        )

    def _say(self, host_unread: bool, unread: list[str], why: Mapping[str, str]) -> None:
        gap = (host_unread, tuple(unread)) if host_unread or unread else None
        if gap == self._gap:
            return
        if gap is None:
            log.info(
                "%s host view: every running VM's memory read again: memory grows are held to the host's", self.driver
            )
        else:
            parts = ["the host's own memory"] if host_unread else []
            parts += [f"{vm} ({why[vm]})" if vm in why else vm for vm in unread]
            log.warning(
                "%s host view without memory: not read: %s; memory grows are not held to the host's memory until it is",
                self.driver,
                ", ".join(parts),
            )
        self._gap = gap
