"""Guest memory of a running libvirt domain: read it, and ask for a new size through virtio-mem and the balloon
(the ``MemoryResizer`` half of the ``libvirt`` driver; shared/docs/memory.md §5 is the measured recipe).

* **Size** = balloon actual (``memoryStats()['actual']``, boot RAM without a balloon) + virtio-mem ``<current>``.
  ``<current>`` lags the guest by about a second (QEMU rate-limits its size events) and can stop short of
  ``<requested>`` for good (pinned pages), so the view reports both: requested vs size. libvirt shows no balloon
  target (``<currentMemory>`` follows the balloon's actual), so the balloon's part of ``requested`` is the last
  target this driver set in this run of the domain, else its actual.
* **Above boot RAM** virtio-mem moves (``updateDeviceFlags`` with the *whole* live element, only ``<requested>``
  changed: libvirt matches the device by it); the balloon is first let out to boot RAM. **Within boot RAM** the
  device goes to 0 and the balloon trims (``setMemoryFlags(KiB, AFFECT_LIVE)``): it covers boot RAM only.
* **Limits**: the device's size and block are libvirt's to enforce, so a request past them goes to libvirt and its
  refusal comes back as ``out-of-bounds`` with libvirt's own message. The balloon has no floor (it inflates until
  the guest's OOM killer runs), so the driver sets one (``shared.libvirt.memview``): 256 MiB or a quarter of boot
  RAM, whichever is more. A domain with neither a virtio-mem device nor a balloon is ``hotplug-disabled``.
* **On the host** (the driver's host view, ``held``): libvirt's ``balloon.current`` follows the guest a second or two
  late, so a grow this driver asked for counts at the size asked until libvirt's figure reaches it (the larger of
  the size and the size asked for, as ``read_memory`` says); a shrink counts at the size, which is the larger.
* **Guest view**: the balloon's stats (``available`` = MemTotal, ``usable`` = MemAvailable), present once the
  guest's virtio_balloon driver reports them. Without the guest's drivers nothing moves and nothing fails
  (memory.md trap 7): the size simply stays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.actuator.drivers.base import DriverError, MemoryView
from shared.libvirt.connection import Connection
from shared.libvirt.domain import Settings, parse_domain
from shared.libvirt.memory import DomainMemory, MemoryXmlError, classify_memory, parse_memory, with_requested
from shared.libvirt.memstats import MemoryStats, from_memory_stats
from shared.libvirt.memview import guest_size, memory_sizes
from shared.messages import ErrorCode
from shared.units import KIB, MIB, format_size


@dataclass(frozen=True)
class LiveMemory:
    """One reading of a running domain: its memory layout and its balloon's stats."""

    layout: DomainMemory
    stats: MemoryStats
    settings: Settings
    balloon_target_bytes: int | None = None  # the last target this driver set in this run of the domain
    domain_id: int = -1


@dataclass(frozen=True)
class Plan:
    """The calls a resize makes, in order: ("balloon", target KiB) or ("device", requested KiB)."""

    steps: tuple[tuple[str, int], ...]


def memory_view(vm: str, live: LiveMemory) -> MemoryView:
    """The MemoryView of one reading (HOTPLUG_DISABLED for a domain that cannot move memory): the sizes are
    ``shared.libvirt.memview``'s, as the collector's ``libvirt`` source reports them."""
    layout = live.layout
    sizes = memory_sizes(layout, guest_size(layout, live.stats.size_bytes))
    if sizes is None:
        raise DriverError(
            ErrorCode.HOTPLUG_DISABLED,
            f"domain '{vm}' has no memory device: neither a virtio-mem <memory model='virtio-mem'> nor a balloon "
            f"(its <memballoon model='none'>)",
        )
    device = layout.virtio_mem
    boot = layout.boot_kib * KIB
    actual = live.stats.size_bytes if layout.has_balloon and live.stats.size_bytes is not None else boot
    balloon = live.balloon_target_bytes if layout.has_balloon and live.balloon_target_bytes is not None else actual
    return MemoryView(
        vm=vm,
        size_bytes=sizes.size_bytes,
        requested_bytes=balloon + (device.requested_kib * KIB if device is not None else 0),
        min_bytes=sizes.min_bytes,
        max_bytes=sizes.max_bytes,
        step_bytes=sizes.step_bytes,
        method=sizes.method,
        guest_total_bytes=live.stats.total_bytes,
        guest_available_bytes=live.stats.available_bytes,
    )


def plan_resize(vm: str, live: LiveMemory, target_bytes: int) -> Plan:
    """The calls that take the domain to ``target_bytes``, or DriverError for a request refused before any call."""
    view = memory_view(vm, live)
    layout = live.layout
    device = layout.virtio_mem
    boot = layout.boot_kib * KIB
    # the balloon's part: its last target where known (it may still be on the way), else its actual
    balloon = view.requested_bytes - (device.requested_kib * KIB if device is not None else 0)
    if target_bytes > boot:
        if device is None:
            # balloon only: libvirt refuses past boot RAM with its own message (8, "higher than max memory")
            return Plan((("balloon", target_bytes // KIB),))
        grow = target_bytes - boot
        if grow > device.size_kib * KIB or grow % (device.block_kib * KIB):
            # past the device or off its block: libvirt's refusal (35) says which, and nothing has moved
            return Plan((("device", grow // KIB),))
        steps: list[tuple[str, int]] = []
        if layout.has_balloon and balloon != boot:
            steps.append(("balloon", boot // KIB))  # let the balloon out first: it trims boot RAM only
        if device.requested_kib * KIB != grow:
            steps.append(("device", grow // KIB))
        return Plan(tuple(steps))
    if target_bytes < view.min_bytes:
        why = "the balloon's floor" if layout.has_balloon else "boot RAM (no balloon to trim it)"
        raise DriverError(
            ErrorCode.OUT_OF_BOUNDS,
            f"domain '{vm}': {format_size(target_bytes)} is under {format_size(view.min_bytes)}, {why}",
        )
    if target_bytes % MIB:
        raise DriverError(ErrorCode.OUT_OF_BOUNDS, f"domain '{vm}': {target_bytes} B is not a whole number of MiB")
    steps = []
    if device is not None and device.requested_kib != 0:
        steps.append(("device", 0))  # unplug first, then trim boot RAM
    if target_bytes != balloon:
        steps.append(("balloon", target_bytes // KIB))
    return Plan(tuple(steps))


class LibvirtMemory:
    """Reads and resizes guest memory on one shared connection. ``check`` refuses an opted-out domain."""

    def __init__(self, conn: Connection, check: Callable[[str, Settings], None]) -> None:
        self.conn = conn
        self.libvirt = conn.libvirt
        self.check = check
        self._targets: dict[tuple[str, int], int] = {}  # (domain, domain id) → last balloon target, bytes
        self._grows: dict[tuple[str, int], int] = {}  # (domain, domain id) → a grow asked for, not landed yet, bytes

    def _error(self, exc: Any) -> DriverError:
        return DriverError(classify_memory(exc.get_error_code(), str(exc)), str(exc))

    async def live(self, vm: str) -> LiveMemory:
        def get(conn: Any) -> tuple[str, dict[str, int]]:
            dom = conn.lookupByName(vm)
            if not dom.isActive():
                raise DriverError(
                    ErrorCode.VM_NOT_RUNNING, f"Requested operation is not valid: domain '{vm}' is not running"
                )
            return dom.XMLDesc(0), dict(dom.memoryStats())

        try:
            xml, stats = await self.conn.call(get, read=True)
        except self.libvirt.libvirtError as exc:
            raise self._error(exc) from exc
        info = parse_domain(xml)
        self.check(vm, info.settings)
        try:
            layout = parse_memory(xml)
        except MemoryXmlError as exc:
            raise DriverError(ErrorCode.UNKNOWN, f"domain '{vm}': {exc}") from exc
        return LiveMemory(
            layout=layout,
            stats=from_memory_stats(stats),
            settings=info.settings,
            balloon_target_bytes=self._targets.get((vm, info.domain_id)),
            domain_id=info.domain_id,
        )

    async def read(self, vm: str) -> MemoryView:
        return memory_view(vm, await self.live(vm))

    async def resize(self, vm: str, target_bytes: int) -> None:
        live = await self.live(vm)
        plan = plan_resize(vm, live, target_bytes)
        device = live.layout.virtio_mem
        key = (vm, live.domain_id)
        self._grows.pop(key, None)  # a new request replaces the last one
        for kind, kib in plan.steps:
            if kind == "device":
                assert device is not None  # plan_resize plans device steps only for a domain with one
                await self._request(vm, with_requested(device.element, kib))
            else:
                await self._balloon(vm, kib)
                self._targets[key] = kib * KIB
        if target_bytes > memory_view(vm, live).size_bytes:
            # every step taken: the guest will have target_bytes, and until libvirt shows it the host view counts it
            self._grows[key] = target_bytes

    def held(self, vm: str, domain_id: int, current_kib: float | None) -> int | None:
        """What a running domain holds of the host's memory, bytes, from its ``balloon.current`` (KiB; None: libvirt
        gave none, and then None): the larger of that and a grow this driver asked for in this run of the domain
        that libvirt does not show yet. A grow shown is forgotten: from then on libvirt's figure says it."""
        if current_kib is None:
            return None
        size = int(current_kib) * KIB
        key = (vm, domain_id)
        asked = self._grows.get(key)
        if asked is not None and size >= asked:
            del self._grows[key]
            asked = None
        return max(size, asked or 0)

    def running(self, domains: set[tuple[str, int]]) -> None:
        """Forget the grows of runs of domains that are over (these are all the running ones, with their ids)."""
        self._grows = {key: size for key, size in self._grows.items() if key in domains}

    async def _request(self, vm: str, element: str) -> None:
        flags = self.libvirt.VIR_DOMAIN_AFFECT_LIVE
        try:  # a change: never repeated by the connection
            await self.conn.call(lambda conn: conn.lookupByName(vm).updateDeviceFlags(element, flags))
        except self.libvirt.libvirtError as exc:
            raise self._error(exc) from exc

    async def _balloon(self, vm: str, kib: int) -> None:
        flags = self.libvirt.VIR_DOMAIN_AFFECT_LIVE
        try:
            await self.conn.call(lambda conn: conn.lookupByName(vm).setMemoryFlags(kib, flags))
        except self.libvirt.libvirtError as exc:
            raise self._error(exc) from exc
