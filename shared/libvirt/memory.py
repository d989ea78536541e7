"""A libvirt domain's memory layout read from its XML, the virtio-mem update element, and libvirt's memory errors
mapped to the contract's codes. Pure functions on XML text, tested without libvirt (shapes: shared/docs/memory.md §5).

Boot RAM is ``<memory>`` less the virtio-mem devices' ``<size>`` (libvirt counts the devices in ``<memory>``). The
live XML of a running domain carries each device's ``<requested>`` (what was asked), ``<current>`` (what the guest
plugged; libvirt learns it from QEMU's rate-limited size events, so it lags the guest by about a second and stays
0 while the guest has no virtio_mem driver), ``<alias>`` and ``<address>``. An update must send that whole live
element with only ``<requested>`` changed: libvirt finds the device by comparing it (a reduced element fails with
"memory 'virtiomem0' not found").
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from shared.libvirt.domain import classify, parse_xml
from shared.messages import ErrorCode

# libvirt's unit names (its docs: "Memory Allocation"); a missing unit is KiB.
_UNIT_BYTES: dict[str, int] = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
}

ERR_CONFIG_UNSUPPORTED = 35
ERR_INVALID_ARG = 8
ERR_NO_DEVICE = 67  # VIR_ERR_DEVICE_MISSING: the update element matched no device


class MemoryXmlError(ValueError):
    """A memory element libvirt would not have written (an unknown unit, a size that is not a number)."""


def to_kib(element: ET.Element | None) -> int | None:
    """An element's size (its text in its ``unit``) in KiB, rounded down; None when the element is absent."""
    if element is None:
        return None
    unit = (element.get("unit") or "KiB").lower()
    factor = _UNIT_BYTES.get(unit)
    text = (element.text or "").strip()
    if factor is None or not text.isdigit():
        raise MemoryXmlError(f"cannot read <{element.tag} unit={unit!r}>{text}</{element.tag}>")
    return int(text) * factor // 1024


@dataclass(frozen=True)
class VirtioMem:
    """One ``<memory model='virtio-mem'>`` device; sizes in KiB."""

    alias: str | None
    size_kib: int
    block_kib: int
    requested_kib: int
    current_kib: int | None  # None in an inactive definition: libvirt reports it only for a running domain
    element: str  # the whole element as libvirt wrote it, for the update


@dataclass(frozen=True)
class DomainMemory:
    """A domain's memory as its XML declares it; sizes in KiB."""

    max_memory_kib: int | None  # <maxMemory>: without it libvirt allows no memory device
    memory_kib: int  # <memory>: boot RAM plus every memory device's size
    current_memory_kib: int  # <currentMemory>: balloon actual plus virtio-mem <current> (live)
    balloon: str | None  # <memballoon model=...>: "virtio", "none", or None when the element is absent
    devices: tuple[VirtioMem, ...]

    @property
    def boot_kib(self) -> int:
        """Boot RAM: what the balloon works within."""
        return self.memory_kib - sum(d.size_kib for d in self.devices)

    @property
    def has_balloon(self) -> bool:
        # libvirt adds a virtio balloon to a domain that names none; only model='none' means no balloon
        return self.balloon != "none"

    @property
    def virtio_mem(self) -> VirtioMem | None:
        """The device the driver moves (the first: the project makes one per domain)."""
        return self.devices[0] if self.devices else None


def _device(element: ET.Element) -> VirtioMem:
    target = element.find("target")
    if target is None:
        raise MemoryXmlError("a virtio-mem device without <target>")
    size = to_kib(target.find("size"))
    if size is None:
        raise MemoryXmlError("a virtio-mem device without <size>")
    alias = element.find("alias")
    element.tail = None  # tostring would carry the text after the element (the parsed tree is ours alone)
    text = ET.tostring(element, encoding="unicode")
    return VirtioMem(
        alias=alias.get("name") if alias is not None else None,
        size_kib=size,
        block_kib=to_kib(target.find("block")) or 2048,  # QEMU's default block on x86 with 4 KiB pages
        requested_kib=to_kib(target.find("requested")) or 0,
        current_kib=to_kib(target.find("current")),
        element=text,
    )


def parse_memory(xml: str) -> DomainMemory:
    """The memory parts of a domain's XML (``dom.XMLDesc(0)``)."""
    root = parse_xml(xml)
    memory = to_kib(root.find("memory")) or 0
    current = to_kib(root.find("currentMemory"))
    devices: list[VirtioMem] = []
    balloon = None
    element_devices = root.find("devices")
    if element_devices is not None:
        for element in element_devices.findall("memory"):
            if element.get("model") == "virtio-mem":
                devices.append(_device(element))
        memballoon = element_devices.find("memballoon")
        balloon = memballoon.get("model") if memballoon is not None else None
    return DomainMemory(
        max_memory_kib=to_kib(root.find("maxMemory")),
        memory_kib=memory,
        current_memory_kib=memory if current is None else current,
        balloon=balloon,
        devices=tuple(devices),
    )


def with_requested(element: str, requested_kib: int) -> str:
    """The device's live element with ``<requested>`` set to ``requested_kib`` and everything else kept."""
    root = parse_xml(element)
    target = root.find("target")
    if target is None:
        raise MemoryXmlError("a virtio-mem device without <target>")
    requested = target.find("requested")
    if requested is None:
        requested = ET.SubElement(target, "requested")
    requested.attrib.clear()
    requested.set("unit", "KiB")
    requested.text = str(requested_kib)
    return ET.tostring(root, encoding="unicode")


def classify_memory(code: int, message: str) -> ErrorCode:
    """The contract's code for a libvirt error met while moving memory (shared/docs/memory.md §5's table)."""
    if code == ERR_CONFIG_UNSUPPORTED and ("block size" in message or "smaller than or equal" in message):
        return ErrorCode.OUT_OF_BOUNDS  # not a multiple of the device's block, or past its size
    if code == ERR_INVALID_ARG and ("higher than max memory" in message or "must not be zero" in message):
        return ErrorCode.OUT_OF_BOUNDS  # the balloon past boot RAM, or to nothing
    if code == ERR_CONFIG_UNSUPPORTED and "maxMemory" in message:
        return ErrorCode.HOTPLUG_DISABLED  # a domain defined without <maxMemory> takes no memory device
    if code == ERR_NO_DEVICE:
        return ErrorCode.UNKNOWN  # the element did not match the live device: a bug here, not the domain's
    return classify(code, message)
