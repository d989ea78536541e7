"""A libvirt domain's vCPU layout, the project's settings in its ``<metadata>``, and libvirt's errors mapped to the
contract's codes. Pure functions on XML text and error (code, message) pairs, so they are tested without libvirt.

Per-domain settings travel with the VM in ``<metadata>``, in the project's own namespace (as annotations do in
Kubernetes): ``<settings enabled="yes|no" min-vcpus="M" max-vcpus="N"/>``. A second namespace holds, in the
*live* definition only, the TCG hot-add count of the running QEMU: ``<tcg domain-id="I" boot-vcpus="B"
adds="A"/>``. It dies with the QEMU process, which is exactly the life of the budget it counts.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from shared.messages import ErrorCode

SETTINGS_NS = "urn:x-hotplug-heaven:libvirt:settings:1"
SETTINGS_PREFIX = "hotplug"
RUNTIME_NS = "urn:x-hotplug-heaven:libvirt:runtime:1"
RUNTIME_PREFIX = "hotplugrun"

# libvirt error codes and domains used here (libvirt's virerror.h; stable ABI numbers).
ERR_INVALID_ARG = 8
ERR_SYSTEM_ERROR = 38
ERR_NO_DOMAIN = 42
ERR_OPERATION_INVALID = 55
ERR_OPERATION_TIMEOUT = 68
ERR_OPERATION_UNSUPPORTED = 84


@dataclass(frozen=True)
class Settings:
    """The project's settings of one domain; None where the domain does not say."""

    enabled: bool | None = None
    min_vcpus: int | None = None
    max_vcpus: int | None = None


@dataclass(frozen=True)
class Vcpu:
    id: int
    enabled: bool
    hotpluggable: bool


@dataclass(frozen=True)
class Budget:
    """TCG hot-adds counted for one run of a domain (``domain_id`` tells runs apart)."""

    domain_id: int
    boot_vcpus: int
    adds: int


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    domain_id: int  # -1 when not running
    kind: str  # libvirt's domain type: "qemu" (TCG), "kvm", ...
    maximum: int  # the <vcpu> maximum
    vcpus: tuple[Vcpu, ...]
    settings: Settings
    budget: Budget | None
    control_log: str | None  # the project's test guest: the log of its control serial port (ttyS1)
    control_socket: str | None = None  # ... and that port's socket, to send it commands

    @property
    def tcg(self) -> bool:
        return self.kind == "qemu"

    @property
    def online(self) -> int:
        return sum(1 for v in self.vcpus if v.enabled)

    @property
    def fixed(self) -> int:
        """Enabled vCPUs that can never be unplugged (vCPU 0 and boot vCPUs not marked hotpluggable)."""
        return sum(1 for v in self.vcpus if v.enabled and (v.id == 0 or not v.hotpluggable))

    @property
    def min_vcpus(self) -> int:
        return max(1, self.fixed, self.settings.min_vcpus or 1)

    @property
    def max_vcpus(self) -> int:
        wanted = self.settings.max_vcpus or self.maximum
        return max(self.min_vcpus, min(wanted, self.maximum))

    def adds_left(self) -> int | None:
        """Hot-adds QEMU allows before it aborts (TCG: ``<vcpu>`` maximum − boot vCPUs per run); None under KVM."""
        if not self.tcg:
            return None
        budget = self.current_budget()
        return self.maximum - budget.boot_vcpus - budget.adds

    def current_budget(self) -> Budget:
        """The counted budget of this run; first seen now, the vCPUs online count as booted (adds made before by
        others are counted in the online count as long as nothing was unplugged in between)."""
        if self.budget is not None and self.budget.domain_id == self.domain_id:
            return self.budget
        return Budget(self.domain_id, self.online, 0)


def parse_xml(text: str) -> ET.Element:
    """Parse XML that libvirt wrote (a domain definition or a metadata element). Python's expat expands no
    external entities and caps entity amplification, and the text comes from the daemon, not from the bus."""
    return ET.fromstring(text)  # noqa: S314 - see above


def _attr_int(element: ET.Element, name: str) -> int | None:
    value = element.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def parse_settings(element: ET.Element | None) -> Settings:
    if element is None:
        return Settings()
    enabled = element.get("enabled")
    return Settings(
        enabled=None if enabled is None else enabled.lower() in ("yes", "true", "1", "on"),
        min_vcpus=_attr_int(element, "min-vcpus"),
        max_vcpus=_attr_int(element, "max-vcpus"),
    )


def parse_settings_xml(text: str | None) -> Settings:
    """Settings from the element ``dom.metadata()`` returns (it drops the prefix); empty when absent."""
    if not text:
        return Settings()
    try:
        return parse_settings(parse_xml(text))
    except ET.ParseError:
        return Settings()


def settings_xml(settings: Settings) -> str:
    element = ET.Element("settings")
    if settings.enabled is not None:
        element.set("enabled", "yes" if settings.enabled else "no")
    if settings.min_vcpus is not None:
        element.set("min-vcpus", str(settings.min_vcpus))
    if settings.max_vcpus is not None:
        element.set("max-vcpus", str(settings.max_vcpus))
    return ET.tostring(element, encoding="unicode")


def budget_xml(budget: Budget) -> str:
    element = ET.Element(
        "tcg", {"domain-id": str(budget.domain_id), "boot-vcpus": str(budget.boot_vcpus), "adds": str(budget.adds)}
    )
    return ET.tostring(element, encoding="unicode")


def parse_domain(xml: str) -> DomainInfo:
    """The parts of a domain's XML (``dom.XMLDesc(0)``) the driver and source need."""
    root = parse_xml(xml)
    vcpu = root.find("vcpu")
    maximum = int(vcpu.text or "1") if vcpu is not None else 1
    current = _attr_int(vcpu, "current") if vcpu is not None else None
    current = maximum if current is None else current
    layout = root.find("vcpus")
    if layout is not None:
        vcpus = tuple(
            Vcpu(int(v.get("id", "0")), v.get("enabled") == "yes", v.get("hotpluggable") == "yes")
            for v in layout.findall("vcpu")
        )
    else:
        # No <vcpus> element: libvirt's default layout, boot vCPUs fixed and the rest hotpluggable.
        vcpus = tuple(Vcpu(i, i < current, i >= current) for i in range(maximum))
    settings = Settings()
    budget = None
    metadata = root.find("metadata")
    if metadata is not None:
        settings = parse_settings(metadata.find(f"{{{SETTINGS_NS}}}settings"))
        tcg = metadata.find(f"{{{RUNTIME_NS}}}tcg")
        if tcg is not None:
            numbers = [_attr_int(tcg, k) for k in ("domain-id", "boot-vcpus", "adds")]
            if all(n is not None for n in numbers):
                budget = Budget(*(n for n in numbers if n is not None))
    control_log = control_socket = None
    devices = root.find("devices")
    for serial in devices.findall("serial") if devices is not None else []:
        target, log = serial.find("target"), serial.find("log")
        if serial.get("type") == "unix" and target is not None and target.get("port") == "1" and log is not None:
            control_log = log.get("file")
            source = serial.find("source")
            control_socket = source.get("path") if source is not None else None
    return DomainInfo(
        name=root.findtext("name") or "",
        uuid=root.findtext("uuid") or "",
        domain_id=int(root.get("id", "-1")),
        kind=root.get("type", ""),
        maximum=maximum,
        vcpus=tuple(sorted(vcpus, key=lambda v: v.id)),
        settings=settings,
        budget=budget,
        control_log=control_log,
        control_socket=control_socket,
    )


def classify(code: int, message: str, op: str = "") -> ErrorCode:
    """The contract's code for a libvirt error (``e.get_error_code()``, ``str(e)``) met while doing ``op``
    ("plug", "unplug" or "" for anything else). The table is shared/docs/libvirt.md's."""
    if code == ERR_NO_DOMAIN:
        return ErrorCode.VM_NOT_FOUND
    if code == ERR_OPERATION_INVALID:  # "domain is not running"
        return ErrorCode.VM_NOT_RUNNING
    if code == ERR_INVALID_ARG:
        if "greater than max" in message:
            return ErrorCode.OUT_OF_BOUNDS
        if "must not be zero" in message:
            return ErrorCode.CPU0
        if "already in requested state" in message:
            return ErrorCode.NOT_ATTACHED if op == "unplug" else ErrorCode.ALREADY_ATTACHED
        if "not present" in message:
            return ErrorCode.CPU_ID_OUT_OF_RANGE
        return ErrorCode.UNKNOWN
    if code == ERR_OPERATION_UNSUPPORTED and "can't be unplugged" in message:
        return ErrorCode.CPU0
    if code == ERR_OPERATION_TIMEOUT:
        # Every TCG unplug ends so although it worked; the driver checks before it reports this.
        return ErrorCode.GUEST_REFUSED if op == "unplug" else ErrorCode.TIMEOUT
    if code == ERR_SYSTEM_ERROR and "monitor" in message:
        # QEMU went away under the call: a hot-add past the TCG budget aborts it.
        return ErrorCode.HOTPLUG_BUDGET if op == "plug" else ErrorCode.VM_NOT_RUNNING
    # Daemon unreachable (38 from RPC) and read-only access (29) have no code of their own in the contract.
    return ErrorCode.UNKNOWN


def hotpluggable_layout(xml: str, boot: int) -> str:
    """The domain XML with an explicit ``<vcpus>`` layout: vCPU 0 fixed, vCPUs 1..boot-1 enabled and hotpluggable
    (so they may leave later: vCPUs present at boot are not hotpluggable by default), the rest disabled and
    hotpluggable. Other namespaces' prefixes in ``<metadata>`` are kept."""
    for _, (prefix, uri) in ET.iterparse(io.StringIO(xml), events=("start-ns",)):  # noqa: S314 - libvirt's XML
        if prefix:
            ET.register_namespace(prefix, uri)
    root = parse_xml(xml)
    vcpu = root.find("vcpu")
    maximum = int(vcpu.text or "1") if vcpu is not None else 1
    layout = root.find("vcpus")
    if layout is None:
        layout = ET.Element("vcpus")
        index = list(root).index(vcpu) + 1 if vcpu is not None else len(root)
        root.insert(index, layout)
    layout.clear()
    layout.tail = "\n  "
    for i in range(maximum):
        ET.SubElement(
            layout,
            "vcpu",
            {"id": str(i), "enabled": "yes" if i < boot else "no", "hotpluggable": "no" if i == 0 else "yes"},
        ).tail = "\n  "
    return ET.tostring(root, encoding="unicode")
