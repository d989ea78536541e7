"""Actuator driver ``libvirt``: live vCPU hot-plug of running libvirt domains (``virDomainSetVcpu``), one vCPU per
call, each verified.

* **Plug** the lowest disabled hotpluggable vCPU id; done when libvirt counts it and, where the guest can tell (the
  project's test guest reports "HP onlined cpuN"; a guest agent answers ``guestVcpus``), the guest has it online.
* **Unplug** the highest enabled hotpluggable vCPU id (never vCPU 0). Under TCG QEMU sends no ``DEVICE_DELETED``,
  so libvirt reports a timeout (68) after 5 s for *every* unplug although it worked, and a guest that refuses
  gives the same error. So a 68 is never taken at its word nor retried blindly: the vCPU's host thread
  (``CPU N/TCG`` in QEMU's /proc tasks) tells whether it really left. Gone: one more call resyncs libvirt (it
  returns in ms). Still there: ``guest-refused``. Cannot tell: ``not-verified``.
* **TCG hot-add budget**: one add past ``<vcpu>`` maximum − boot vCPUs aborts QEMU. The adds of the running QEMU
  are counted in the domain's live metadata (it dies with the QEMU process), before each call, and refused with
  ``hotplug-budget-exhausted`` first. KVM domains have no such budget.
* Every libvirt error of shared/docs/libvirt.md's table maps to a contract code with libvirt's message kept
  (``shared.libvirt.domain.classify``). Blocking calls run in a thread on one shared, reconnecting connection.
* **Memory** (``read_memory``/``resize_memory``): virtio-mem above boot RAM, the balloon within it
  (``services.actuator.drivers.libvirt_memory``).
* **Host view**: the node's CPUs and memory (``getInfo``: MiB) and ``vcpu.current`` and ``balloon.current`` of every
  running domain, opted in or not, in one ``getAllDomainStats(VCPU | BALLOON, RUNNING | NOWAIT)`` call (without NOWAIT
  it waits out a 5 s TCG unplug; ``balloon.current`` comes without a job, so NOWAIT never leaves it out), as the
  ``libvirt`` collector source reads them: no call per domain (``XMLDesc`` waits behind an unplug). Between an unplug
  timeout and its resync libvirt still counts the vCPU that left: one too many, which only holds room longer. A
  domain's memory is ``balloon.current`` (what the guest has: balloon actual plus virtio-mem ``<current>``, all its
  configured memory without either device), or while a grow this driver asked for has not landed, the size asked
  (``LibvirtMemory.held``): libvirt's figure follows the guest up to a second or two late. A request made elsewhere
  (``virsh``, ``hotplug libvirt set``) counts once libvirt's figure shows it. A running domain without
  ``balloon.current`` leaves the view without memory (``services.actuator.drivers.host_memory``), logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from services.actuator.drivers.base import DriverError, HostView, MemoryView, VmView
from services.actuator.drivers.host_memory import HostMemory
from services.actuator.drivers.libvirt_memory import LibvirtMemory
from shared.libvirt.connection import Connection
from shared.libvirt.domain import (
    RUNTIME_NS,
    RUNTIME_PREFIX,
    Budget,
    DomainInfo,
    Settings,
    budget_xml,
    classify,
    parse_domain,
)
from shared.libvirt.guest import GuestChannel
from shared.messages import ErrorCode
from shared.qemu.vm import parse_cpu_list, parse_stat, vcpu_threads
from shared.units import MIB

log = logging.getLogger(__name__)

GUEST_ONLINE_TIMEOUT_S = 10.0
THREAD_GONE_TIMEOUT_S = 3.0
COUNT_TIMEOUT_S = 5.0
PROC = Path("/proc")

_Row = tuple[str, int, int, float | None]  # a host view's domain: name, id, vCPUs, balloon.current (KiB; None: none)


def qemu_pid(uuid: str, proc: Path = PROC) -> int | None:
    """The QEMU process of the domain with ``uuid`` (libvirt passes ``-uuid <uuid>``), found in /proc: works for
    every URI (system, session, embed) as long as it runs on this host and we may read its command line."""
    needle = b"\x00-uuid\x00" + uuid.encode() + b"\x00"
    try:
        entries = list(proc.iterdir())
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            if needle in b"\x00" + (entry / "cmdline").read_bytes():
                return int(entry.name)
        except OSError:
            continue
    return None


class LibvirtDriver:
    name = "libvirt"

    def __init__(self, uri: str | None = None, *, opt_in: bool = False, connection: Connection | None = None) -> None:
        self.conn = connection or Connection(uri)
        self.libvirt = self.conn.libvirt
        self.opt_in = opt_in
        self._pids: dict[tuple[str, int], int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.memory = LibvirtMemory(self.conn, self._check_opted_in)
        self._host_memory = HostMemory(self.name)

    # ---- reading ----------------------------------------------------------------------------------------------

    def _error(self, exc: Any, op: str = "") -> DriverError:
        return DriverError(classify(exc.get_error_code(), str(exc), op), str(exc))

    async def info(self, vm: str) -> DomainInfo:
        """The running domain's live definition; refuses an opted-out domain."""

        def get(conn: Any) -> DomainInfo:
            dom = conn.lookupByName(vm)
            if not dom.isActive():
                raise DriverError(
                    ErrorCode.VM_NOT_RUNNING, f"Requested operation is not valid: domain '{vm}' is not running"
                )
            return parse_domain(dom.XMLDesc(0))

        try:
            info = await self.conn.call(get, read=True)
        except self.libvirt.libvirtError as exc:
            raise self._error(exc) from exc
        self._check_opted_in(vm, info.settings)
        return info

    def _check_opted_in(self, vm: str, settings: Settings) -> None:
        if settings.enabled is False or (self.opt_in and settings.enabled is not True):
            raise DriverError(
                ErrorCode.HOTPLUG_DISABLED,
                f"domain '{vm}' is not opted in to hot-plug (its hotplug settings metadata: "
                f"enabled={'no' if settings.enabled is False else 'unset'})",
            )

    async def read(self, vm: str) -> VmView:
        info = await self.info(vm)
        return VmView(vm=vm, online_vcpus=info.online, min_vcpus=info.min_vcpus, max_vcpus=info.max_vcpus)

    async def host_view(self) -> HostView:
        libvirt = self.libvirt

        def get(conn: Any) -> tuple[list[_Row], list[Any]]:
            flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
            kinds = libvirt.VIR_DOMAIN_STATS_VCPU | libvirt.VIR_DOMAIN_STATS_BALLOON
            # a domain whose count is missing is counted at its maximum: room is never given away on a guess
            rows = [
                (
                    dom.name(),
                    dom.ID(),
                    int(stats.get("vcpu.current", stats.get("vcpu.maximum", 1))),
                    stats.get("balloon.current"),
                )
                for dom, stats in conn.getAllDomainStats(kinds, flags)
            ]
            return rows, list(conn.getInfo())  # [model, memory MiB, active CPUs, MHz, nodes, sockets, ...]

        try:
            rows, info = await self.conn.call(get, read=True)
        except self.libvirt.libvirtError as exc:
            raise self._error(exc) from exc
        # on the event loop, not in the call's thread: what the driver asked of each domain is kept here
        held = {name: self.memory.held(name, domain_id, current) for name, domain_id, _, current in rows}
        self.memory.running({(name, domain_id) for name, domain_id, _, _ in rows})
        why = {name: "libvirt gave no balloon.current" for name, size in held.items() if size is None}
        node_mib = int(info[1])
        return self._host_memory.view(
            int(info[2]),
            {name: vcpus for name, _, vcpus, _ in rows},
            node_mib * MIB if node_mib > 0 else None,
            held,
            why,
        )

    async def _set_vcpu(self, vm: str, vcpu: int, enable: bool) -> None:
        """One ``setVcpu`` call (a change: never repeated by the connection)."""
        flags = self.libvirt.VIR_DOMAIN_AFFECT_LIVE
        await self.conn.call(lambda conn: conn.lookupByName(vm).setVcpu(str(vcpu), 1 if enable else 0, flags))

    def _lock(self, vm: str) -> asyncio.Lock:
        return self._locks.setdefault(vm, asyncio.Lock())

    # ---- plug -------------------------------------------------------------------------------------------------

    async def plug(self, vm: str) -> None:
        async with self._lock(vm):
            await self._plug(vm)

    async def _plug(self, vm: str) -> None:
        info = await self.info(vm)
        if info.online >= info.max_vcpus:
            raise DriverError(
                ErrorCode.CPU_ID_OUT_OF_RANGE, f"domain '{vm}' already has {info.online} vCPUs, its maximum"
            )
        free = [v for v in info.vcpus if not v.enabled and v.hotpluggable]
        if not free:
            raise DriverError(ErrorCode.CPU_ID_OUT_OF_RANGE, f"domain '{vm}' has no hotpluggable vCPU left to enable")
        target = min(free, key=lambda v: v.id)
        if info.tcg:
            left = info.adds_left()
            if left is not None and left <= 0:
                budget = info.current_budget()
                raise DriverError(
                    ErrorCode.HOTPLUG_BUDGET,
                    f"domain '{vm}' has used all {info.maximum - budget.boot_vcpus} hot-adds QEMU allows "
                    f"it under TCG in one run (<vcpu> maximum {info.maximum} - {budget.boot_vcpus} "
                    f"booted); restart the domain to plug again",
                )
            await self._count_add(vm, info)
        channel = await asyncio.to_thread(self._channel, info)  # reads the guest's control log
        mark = await asyncio.to_thread(channel.size) if channel else 0
        expected = info.online + 1
        try:
            await self._set_vcpu(vm, target.id, True)
        except self.libvirt.libvirtError as exc:
            raise self._error(exc, "plug") from exc
        await self._verify_plug(vm, expected, channel, mark)

    async def _count_add(self, vm: str, info: DomainInfo) -> None:
        """Count the add in the live metadata before the call: if QEMU accepts it and we die, the budget knows."""
        budget = info.current_budget()
        counted = budget_xml(Budget(budget.domain_id, budget.boot_vcpus, budget.adds + 1))
        element = self.libvirt.VIR_DOMAIN_METADATA_ELEMENT
        flags = self.libvirt.VIR_DOMAIN_AFFECT_LIVE
        try:
            await self.conn.call(
                lambda conn: conn.lookupByName(vm).setMetadata(element, counted, RUNTIME_PREFIX, RUNTIME_NS, flags)
            )
        except self.libvirt.libvirtError as exc:
            raise self._error(exc, "plug") from exc

    @staticmethod
    def _channel(info: DomainInfo) -> GuestChannel | None:
        """The project's test guest's control log, when this domain has one we can read."""
        if info.control_log is None:
            return None
        channel = GuestChannel(info.control_log, info.control_socket)
        return channel if channel.ready() else None

    async def _agent_online(self, vm: str) -> int | None:
        """CPUs online as the guest agent sees them; None without an agent."""

        def ask(conn: Any) -> int | None:
            try:
                answer = conn.lookupByName(vm).guestVcpus()
            except self.libvirt.libvirtError:
                return None  # no agent configured or answering (74, 86): the guest cannot tell
            if not answer or "online" not in answer:
                return None
            return len(parse_cpu_list(str(answer["online"])))

        return await self.conn.call(ask, read=True)

    async def _verify_plug(self, vm: str, expected: int, channel: GuestChannel | None, mark: int) -> None:
        deadline = time.monotonic() + GUEST_ONLINE_TIMEOUT_S
        counted = guest_says = False
        use_agent = channel is None and await self._agent_online(vm) is not None
        while time.monotonic() < deadline:
            if not counted:
                counted = (await self.info(vm)).online >= expected
            if channel is not None:
                news = await asyncio.to_thread(channel.lines_since, mark)
                stats = [s for s in (parse_stat_line(line) for line in news) if s is not None]
                guest_says = any(line.startswith("HP onlined") for line in news) or bool(
                    stats and len(stats[-1]) >= expected
                )
            elif use_agent:
                online = await self._agent_online(vm)
                guest_says = online is not None and online >= expected
            else:
                guest_says = True  # the guest cannot tell: libvirt's count is all there is
            if counted and guest_says:
                return
            await asyncio.sleep(0.02)
        what = "libvirt did not count it" if not counted else "the guest did not report it online"
        raise DriverError(
            ErrorCode.NOT_VERIFIED, f"domain '{vm}': after the plug {what} within {GUEST_ONLINE_TIMEOUT_S:.0f} s"
        )

    # ---- unplug -----------------------------------------------------------------------------------------------

    async def unplug(self, vm: str) -> None:
        async with self._lock(vm):
            await self._unplug(vm)

    async def _unplug(self, vm: str) -> None:
        info = await self.info(vm)
        removable = [v for v in info.vcpus if v.enabled and v.hotpluggable and v.id != 0]
        if not removable:
            if info.online <= 1:
                raise DriverError(ErrorCode.CPU0, f"domain '{vm}' has only vCPU 0, which never leaves")
            raise DriverError(
                ErrorCode.CPU0,
                f"domain '{vm}': its {info.online} vCPUs were present at boot and are "
                f"not hotpluggable (hotplug libvirt prepare marks them so)",
            )
        victim = max(removable, key=lambda v: v.id).id
        try:
            await self._set_vcpu(vm, victim, False)
        except self.libvirt.libvirtError as exc:
            if exc.get_error_code() != self.libvirt.VIR_ERR_OPERATION_TIMEOUT:
                raise self._error(exc, "unplug") from exc
            await self._settle_timeout(vm, info, victim, str(exc))
        await self._verify_unplug(vm, info, victim)

    async def _settle_timeout(self, vm: str, info: DomainInfo, victim: int, message: str) -> None:
        """libvirt gave up waiting (68). Whether the vCPU left is told by its thread, never by trying again."""
        gone = await self._thread_gone(info, victim)
        if gone is None:
            raise DriverError(
                ErrorCode.NOT_VERIFIED,
                f"{message} (cannot tell whether vCPU {victim} left: QEMU's threads cannot be read here)",
            )
        if not gone:
            raise DriverError(
                ErrorCode.GUEST_REFUSED,
                f"{message} (vCPU {victim}'s thread is still there: the guest did not release it)",
            )
        # It left: one more call makes libvirt see so (it returns in ms); "already in requested state" is fine too.
        try:
            await self._set_vcpu(vm, victim, False)
        except self.libvirt.libvirtError as exc:
            if exc.get_error_code() != self.libvirt.VIR_ERR_INVALID_ARG:
                raise self._error(exc, "unplug") from exc

    async def _thread_gone(self, info: DomainInfo, victim: int) -> bool | None:
        deadline = time.monotonic() + THREAD_GONE_TIMEOUT_S
        while True:
            threads = await asyncio.to_thread(self._threads, info)
            if threads is None:
                return None
            if victim not in threads:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    def _threads(self, info: DomainInfo) -> set[int] | None:
        key = (info.uuid, info.domain_id)
        pid = self._pids.get(key)
        threads = vcpu_threads(pid) if pid is not None else None
        if threads is None or 0 not in threads:  # not found yet, or the pid is no longer that QEMU
            pid = qemu_pid(info.uuid)
            if pid is None:
                return None
            self._pids[key] = pid
            threads = vcpu_threads(pid)
        return threads

    async def _verify_unplug(self, vm: str, before: DomainInfo, victim: int) -> None:
        deadline = time.monotonic() + COUNT_TIMEOUT_S
        while True:
            now = await self.info(vm)
            if now.online < before.online:
                return
            if time.monotonic() >= deadline:
                raise DriverError(
                    ErrorCode.NOT_VERIFIED,
                    f"domain '{vm}' still counts {now.online} vCPUs after vCPU {victim} was unplugged",
                )
            await asyncio.sleep(0.05)

    # ---- memory -----------------------------------------------------------------------------------------------

    async def read_memory(self, vm: str) -> MemoryView:
        return await self.memory.read(vm)

    async def resize_memory(self, vm: str, target_bytes: int) -> None:
        async with self._lock(vm):
            await self.memory.resize(vm, target_bytes)

    async def close(self) -> None:
        self.conn.close()


def parse_stat_line(line: str) -> tuple[int, ...] | None:
    """The online CPUs of a test guest's STAT line, None for other lines."""
    stat = parse_stat(line.strip())
    return stat.online if stat is not None else None
