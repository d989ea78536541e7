"""Collector source ``libvirt``: every running domain (or those selected) on a read-only libvirt connection.

One bulk call per round, ``getAllDomainStats(VCPU | BALLOON, RUNNING | NOWAIT)``: without NOWAIT it blocks for the
whole 5 s of a TCG unplug. Per vCPU, ``vcpu.N.time`` is its host thread's CPU time; a re-plugged vCPU is a new
thread whose time restarts from 0 (and reads 0 between an unplug timeout and libvirt's resync), so a drop starts a
new series (its key gets a new generation) and the VM's CPU total is the sum of the increases, never going back.
``vcpu.N.delay`` is host run-queue wait: host contention, which more vCPUs would not cure, so it is exported as a
metric (``hotplug_collector_host_wait_seconds``) and not as pressure, as the other host-side sources do. Bounds
and opt-in/out come from the domain's metadata (``shared.libvirt.domain``), re-read every 10 s; the whole definition
only once per run of a domain, as ``XMLDesc`` waits behind a running unplug. For the project's test guest, pressure
comes from the guest's own run queue on its control port, as for the ``qemu`` source.

Memory (a domain with a virtio-mem device or a balloon; None for one with neither) comes from the same call:
``balloon.current`` is what the guest has (balloon actual plus virtio-mem ``<current>``, libvirt's own sum, kept
without a job), and the limits come from the memory layout of the definition read once per run, both through the
function the driver's ``read_memory`` uses (``shared.libvirt.memview``), so a sample's size is the one the actuator
checks a command against. The guest's MemTotal, MemAvailable and swap-in are the balloon's stats
(``shared.libvirt.memstats``), present once its virtio_balloon driver sends them and libvirt could take the job
for them this round (NOWAIT leaves them out while a job runs, ``balloon.current`` never). The balloon does not count
OOM kills; the project's test guest does, in its STAT line, and they are taken from there.

The host reading comes from the same round: the node's CPUs and memory (``getInfo``), and the vCPUs, ``vcpu.N.delay``
and ``balloon.current`` of every running domain, selected, opted out or not (a domain the collector leaves alone still
holds its vCPUs and memory). A domain's memory on the host is its ``balloon.current``, libvirt's figure of what the
guest has: a move under way counts once it has landed, as that figure follows the guest. A running domain without one
leaves the host's memory unreported that round rather than counted short.

Pressure between the rounds (``watch_pressure``): a domain running the project's test guest says ``PSI cpu ...`` on
its control port the moment a task waits, and the source follows those lines as the ``qemu`` source does
(``services.collector.sources.psi_lines``); the round's pressure is then counted from the runnable tasks of the
guest's latest line, the PSI line's on an urgent round. Other domains have their rises followed by the collector
(``services.collector.urgent``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from services.collector.sources.base import HostReading, MemoryCounters, Reading
from services.collector.sources.guest import RunQueueIntegral
from services.collector.sources.guest_memory import libvirt_counters
from services.collector.sources.psi_lines import PsiLogWatch
from shared.clock import Clock
from shared.libvirt.connection import Connection
from shared.libvirt.domain import SETTINGS_NS, DomainInfo, Settings, parse_domain, parse_settings_xml
from shared.libvirt.guest import GuestChannel
from shared.libvirt.memory import DomainMemory, MemoryXmlError, parse_memory
from shared.libvirt.memstats import from_domain_stats
from shared.libvirt.memview import memory_sizes
from shared.qemu.vm import GuestStat
from shared.units import KIB, MIB

log = logging.getLogger(__name__)

DEFINITION_TTL_S = 10.0  # metadata (bounds, opt-in) is re-read this often: an admin may change it live


Row = tuple[str, str, dict[str, Any], str | None, Settings | None]


@dataclass
class _Host:
    """The node as one round saw it: its CPUs and memory, every running domain's vCPUs, its vCPUs' host wait and its
    memory (None: a domain whose memory libvirt did not give)."""

    cpus: int
    memory_bytes: int | None = None
    vms: dict[str, int] = field(default_factory=dict)
    wait: dict[str, float] = field(default_factory=dict)
    memory: dict[str, int | None] = field(default_factory=dict)

    def reading(self, at: float) -> HostReading:
        """The host reading; its memory only when the node's and every running domain's are known. Pure."""
        held = {name: size for name, size in self.memory.items() if size is not None}
        known = self.memory_bytes is not None and len(held) == len(self.memory)
        return HostReading(
            time=at,
            cpus=max(1, self.cpus),
            vms=self.vms,
            host_wait_seconds=self.wait,
            memory_bytes=self.memory_bytes if known else None,
            vm_memory=held if known else None,
        )


def _host_side(name: str, domain_id: int, stats: dict[str, Any], host: _Host) -> None:
    """Add one running domain's vCPUs, per-vCPU host wait (``vcpu.N.delay``, ns) and memory (``balloon.current``,
    KiB) to ``host``."""
    host.vms[name] = int(stats.get("vcpu.current", 0))
    current = stats.get("balloon.current")
    host.memory[name] = int(current) * KIB if current is not None else None
    for key, value in stats.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "vcpu" and parts[1].isdigit() and parts[2] == "delay":
            host.wait[f"{name}:{domain_id}:{parts[1]}"] = float(value) / 1e9


@dataclass
class _Domain:
    """What the source keeps per running domain between rounds."""

    info: DomainInfo
    read_at: float
    last: dict[int, float] = field(default_factory=dict)  # vCPU id -> last time (s)
    generation: dict[int, int] = field(default_factory=dict)
    total: float = 0.0
    pressure: RunQueueIntegral = field(default_factory=RunQueueIntegral)
    memory: DomainMemory | None = None  # the memory layout of this run (None: its XML could not be read)


def _layout(name: str, xml: str) -> DomainMemory | None:
    try:
        return parse_memory(xml)
    except MemoryXmlError as exc:
        log.warning("domain %s: memory left out: %s", name, exc)
        return None


def memory_counters(
    layout: DomainMemory | None, stats: dict[str, Any], stat: GuestStat | None = None
) -> MemoryCounters | None:
    """A domain's memory from its layout, its row of domain stats (``balloon.*``) and, for the project's test guest,
    its last STAT line (its OOM kills): None for a domain with no memory device, or when libvirt gave no
    ``balloon.current``. Pure."""
    balloon = from_domain_stats(stats)
    if layout is None or balloon.size_bytes is None:
        return None
    return libvirt_counters(memory_sizes(layout, balloon.size_bytes), balloon, stat)


class LibvirtSource:
    name = "libvirt"

    def __init__(
        self,
        clock: Clock,
        uri: str | None = None,
        *,
        domains: Iterable[str] = (),
        opt_in: bool = False,
        registry: CollectorRegistry | None = None,
        connection: Connection | None = None,
    ) -> None:
        self.clock = clock
        self.conn = connection or Connection(uri, read_only=True)
        self.libvirt = self.conn.libvirt
        self.selected = set(domains)
        self.opt_in = opt_in
        self._domains: dict[str, _Domain] = {}
        self._host: _Host | None = None
        self._read_at: float | None = None
        self.host_wait = (
            Gauge(
                "hotplug_collector_host_wait_seconds",
                "Cumulative host run-queue wait of a VM's vCPU threads (libvirt vcpu.N.delay): host "
                "contention, not VM demand",
                ["vm"],
                registry=registry,
            )
            if registry
            else None
        )

    def _stats(self, conn: Any) -> tuple[list[Row], _Host]:
        flags = (
            self.libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING
            | self.libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
        )
        out: list[Row] = []
        info = conn.getInfo()  # [model, memory MiB, active CPUs, MHz, nodes, sockets, ...]
        host = _Host(cpus=int(info[2]), memory_bytes=int(info[1]) * MIB if int(info[1]) > 0 else None)
        kinds = self.libvirt.VIR_DOMAIN_STATS_VCPU | self.libvirt.VIR_DOMAIN_STATS_BALLOON
        for dom, stats in conn.getAllDomainStats(kinds, flags):
            name = dom.name()
            _host_side(name, dom.ID(), stats, host)
            if self.selected and name not in self.selected:
                continue
            uuid, domain_id = dom.UUIDString(), dom.ID()
            known = self._domains.get(uuid)
            xml = settings = None
            try:
                if known is None or known.info.domain_id != domain_id:
                    # Once per run of a domain: XMLDesc waits behind a running unplug (4.5 s measured), metadata
                    # and the NOWAIT stats do not.
                    xml = dom.XMLDesc(0)
                elif time.monotonic() - known.read_at > DEFINITION_TTL_S:
                    settings = self._settings(dom)
            except self.libvirt.libvirtError as exc:
                log.warning("cannot read the definition of domain %s: %s", name, exc)
                continue
            out.append((name, uuid, stats, xml, settings))
        return out, host

    def _settings(self, dom: Any) -> Settings:
        try:
            return parse_settings_xml(dom.metadata(self.libvirt.VIR_DOMAIN_METADATA_ELEMENT, SETTINGS_NS, 0))
        except self.libvirt.libvirtError as exc:
            if exc.get_error_code() == self.libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return Settings()
            raise

    async def read(self) -> list[Reading]:
        self._host = None
        try:
            rows, self._host = await self.conn.call(self._stats, read=True)
        except self.libvirt.libvirtError as exc:
            log.warning("libvirt %s: %s", self.conn.uri, exc)
            return []
        now = self._read_at = self.clock.now()
        readings = []
        seen = set()
        for name, uuid, stats, xml, settings in rows:
            seen.add(uuid)
            state = self._domains.get(uuid)
            if xml is not None:
                # a new run: afresh
                state = self._domains[uuid] = _Domain(parse_domain(xml), time.monotonic(), memory=_layout(name, xml))
            elif state is not None and settings is not None:
                state.info, state.read_at = dataclasses.replace(state.info, settings=settings), time.monotonic()
            if state is None:
                continue
            settings = state.info.settings
            if settings.enabled is False or (self.opt_in and settings.enabled is not True):
                continue
            log_file = state.info.control_log
            stat, running = (None, None)
            if log_file is not None:
                stat, running = await asyncio.to_thread(GuestChannel(log_file).guest_reading)
            reading = self._reading(name, state, stats, now, stat, running)
            if reading is not None:
                readings.append(reading)
        for uuid in set(self._domains) - seen:
            del self._domains[uuid]
        return readings

    def _reading(
        self,
        name: str,
        state: _Domain,
        stats: dict[str, Any],
        now: float,
        stat: GuestStat | None,
        running: int | None,
    ) -> Reading | None:
        """One domain's reading from its libvirt stats and its guest's last STAT line (the project's test guest), its
        run queue as the guest's latest line says it (on an urgent round, the PSI line said as the load came)."""
        current = int(stats.get("vcpu.current", 0))
        if current < 1:
            return None
        per_vcpu: dict[str, float] = {}
        delay = 0.0
        first = not state.last
        present = set()
        for key, value in stats.items():
            parts = key.split(".")
            if len(parts) != 3 or parts[0] != "vcpu" or not parts[1].isdigit():
                continue
            vcpu = int(parts[1])
            if parts[2] == "delay":
                delay += float(value) / 1e9
            if parts[2] != "time":
                continue
            present.add(vcpu)
            seconds = float(value) / 1e9
            last = state.last.get(vcpu)
            if last is None:
                if not first:
                    state.total += seconds  # plugged since the last round: all its time is new
            elif seconds < last:
                state.generation[vcpu] = state.generation.get(vcpu, 0) + 1  # re-plugged: a new thread
                state.total += seconds
            else:
                state.total += seconds - last
            state.last[vcpu] = seconds
            per_vcpu[f"{vcpu:04d}.{state.generation.get(vcpu, 0)}"] = seconds
        for vcpu in set(state.last) - present:  # unplugged: if it comes back, it is a new series
            del state.last[vcpu]
            state.generation[vcpu] = state.generation.get(vcpu, 0) + 1
        if self.host_wait is not None:
            self.host_wait.labels(name).set(delay)
        if not per_vcpu:
            return None
        waiting = None
        if running is not None:
            # the line's running count includes its own reader (the STAT line's awk, or the PSI watcher's shell)
            online = len(stat.online) if stat is not None else current
            waiting = state.pressure.add(now, max(0, running - 1 - online))
        return Reading(
            vm=name,
            time=now,
            online_vcpus=current,
            min_vcpus=state.info.min_vcpus,
            max_vcpus=state.info.max_vcpus,
            cpu_seconds=state.total,
            per_vcpu_seconds=per_vcpu,
            waiting_core_seconds=waiting,
            memory=memory_counters(state.memory, stats, stat),
        )

    def watch_pressure(self, fired: Callable[[], None]) -> PsiLogWatch:
        """Follow the PSI lines of the running domains that are the project's test guest (they have a control log),
        calling ``fired`` on each (``services.collector.sources.psi_lines``)."""
        return PsiLogWatch(
            lambda: {uuid: Path(s.info.control_log) for uuid, s in self._domains.items() if s.info.control_log}, fired
        )

    async def host(self) -> HostReading | None:
        """The node as this round's read saw it (None when that read failed)."""
        if self._host is None or self._read_at is None:
            return None
        return self._host.reading(self._read_at)

    async def close(self) -> None:
        self.conn.close()
