"""A host's memory as the collector's sources and the actuator's drivers both report it: this machine's memory
(``MemTotal`` of ``/proc/meminfo``) and the rule that a host's memory goes with every running VM's, or not at all.

The qemu and virtualbox drivers and the qemu collector source run on the machine whose guests they see, so its
``/proc/meminfo`` is the host's; libvirt says its node's memory itself (``getInfo``). A committed sum that left out
a running VM would say the host has room it does not have, so a host whose memory, or any running VM's, is unknown
reports none (:func:`host_memory`): its memory is then not arbitrated, rather than arbitrated wrongly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from shared.units import KIB

log = logging.getLogger(__name__)

MEMINFO = Path("/proc/meminfo")


def meminfo_total_bytes(text: str) -> int | None:
    """``MemTotal`` of a ``/proc/meminfo`` text, in bytes; None when it has no readable one. Pure."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "MemTotal":
            fields = value.split()
            if len(fields) == 2 and fields[0].isdigit() and fields[1] == "kB":
                return int(fields[0]) * KIB
            return None
    return None


def read_host_memory(path: Path = MEMINFO) -> int | None:
    """This machine's memory in bytes, or None when it cannot be read (blocking: call it in a worker thread)."""
    try:
        return meminfo_total_bytes(path.read_text())
    except OSError as exc:
        log.warning("cannot read the host's memory from %s: %s", path, exc)
        return None


def host_memory(
    memory_bytes: int | None, running: Iterable[str], held: Mapping[str, int | None]
) -> tuple[int | None, dict[str, int] | None]:
    """The host's memory and every running VM's (``held``: what each holds, bytes; None or absent: unknown), or
    (None, None) when the host's memory or any running VM's is unknown. Pure."""
    vm_memory: dict[str, int] = {}
    for name in running:
        size = held.get(name)
        if size is None:
            return None, None
        vm_memory[name] = size
    if memory_bytes is None:
        return None, None
    return memory_bytes, vm_memory
