"""The project's test guest (shared/qemu's kernel + busybox ``/init``) as a transient libvirt domain, and its
control channel.

The domain is TCG (``type='qemu'``: KVM cannot run a stock kernel on these machines) with a large ``<vcpu>``
maximum, because under TCG each run allows only maximum − boot vCPUs hot-adds; the project's bound goes in the
domain's metadata instead. Its files live in ``<root>/<hash of the name>/`` so any domain name (spaces, quotes,
``$(…)``) makes a short, safe path. The XML is built with ElementTree, never by pasting text. QEMU runs as the
calling user (a static DAC label), so it reads the cached image under the user's home and libvirt relabels
nothing.

With ``max_memory_mb`` the domain also gets guest memory that moves (shared/docs/memory.md §5): ``<maxMemory>``, a
virtio-mem device of max − boot RAM in 2 MiB blocks (nothing plugged at boot), a virtio balloon that deflates on
the guest's OOM and reports free pages, with stats every 2 s, and ``memhp_default_state=online_movable`` on the
kernel command line so the guest onlines hot-added blocks as movable (fully unpluggable again). Without it the
domain is as before: fixed RAM, no balloon.
"""

from __future__ import annotations

import hashlib
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from shared.libvirt.domain import SETTINGS_NS, SETTINGS_PREFIX, Settings, parse_xml
from shared.qemu.image import GuestImage
from shared.qemu.vm import GuestStat, file_size, lines_since, parse_stat, reading_of, send_line

LIFETIME_MAXIMUM = 32
BOOT_TIMEOUT_S = 60.0
STARTED_BY = "hotplug libvirt start"
BLOCK_MIB = 2  # virtio-mem's block on x86: requests and the device's size are multiples of it
CMDLINE = "console=ttyS0 panic=-1 quiet"
MEMORY_CMDLINE = "memhp_default_state=online_movable"


def default_root() -> Path:
    env = os.environ.get("HOTPLUG_LIBVIRT_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hotplug-heaven" / "libvirt"


def guest_dir(name: str, root: Path | None = None) -> Path:
    return (root or default_root()) / hashlib.sha256(name.encode()).hexdigest()[:16]


def domain_xml(
    name: str,
    image: GuestImage,
    directory: Path,
    *,
    max_vcpus: int,
    vcpus: int,
    memory_mb: int = 256,
    maximum: int | None = None,
    max_memory_mb: int | None = None,
) -> str:
    """A TCG domain booting the test guest, its consoles in ``directory``. ``maximum`` is the ``<vcpu>`` maximum
    (default: large, for the hot-add budget); ``max_vcpus`` the project's bound, in the metadata. ``max_memory_mb``
    (above ``memory_mb``, by whole 2 MiB blocks) adds virtio-mem and the balloon; ``memory_mb`` is then boot RAM."""
    maximum = maximum or max(max_vcpus, LIFETIME_MAXIMUM)
    device_mb = check_memory(memory_mb, max_memory_mb)
    d = ET.Element("domain", type="qemu")
    ET.SubElement(d, "name").text = name
    metadata = ET.SubElement(d, "metadata")
    ET.register_namespace(SETTINGS_PREFIX, SETTINGS_NS)
    ET.SubElement(
        metadata,
        f"{{{SETTINGS_NS}}}settings",
        {"enabled": "yes", "min-vcpus": "1", "max-vcpus": str(max_vcpus), "started-by": STARTED_BY},
    )
    if device_mb:
        # slots: QEMU's DIMM slots; virtio-mem needs none, but the measured recipe kept libvirt's usual 4
        ET.SubElement(d, "maxMemory", slots="4", unit="MiB").text = str(memory_mb + device_mb)
        ET.SubElement(d, "memory", unit="MiB").text = str(memory_mb + device_mb)  # libvirt counts the device in
        ET.SubElement(d, "currentMemory", unit="MiB").text = str(memory_mb)
    else:
        ET.SubElement(d, "memory", unit="MiB").text = str(memory_mb)
    ET.SubElement(d, "vcpu", placement="static", current=str(vcpus)).text = str(maximum)
    os_ = ET.SubElement(d, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="q35").text = "hvm"
    ET.SubElement(os_, "kernel").text = str(image.kernel)
    ET.SubElement(os_, "initrd").text = str(image.initrd)
    ET.SubElement(os_, "cmdline").text = f"{CMDLINE} {MEMORY_CMDLINE}" if device_mb else CMDLINE
    features = ET.SubElement(d, "features")
    ET.SubElement(features, "acpi")  # ACPI delivers CPU hot-plug to the guest
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(d, event).text = "destroy"
    devices = ET.SubElement(d, "devices")
    console = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(console, "source", path=str(directory / "console.log"))
    ET.SubElement(console, "target", port="0")
    control = ET.SubElement(devices, "serial", type="unix")
    ET.SubElement(control, "source", mode="bind", path=str(directory / "ctl.sock"))
    ET.SubElement(control, "log", file=str(directory / "ctl.log"))
    ET.SubElement(control, "target", port="1")
    ET.SubElement(devices, "controller", type="usb", model="none")
    if device_mb:
        balloon = ET.SubElement(devices, "memballoon", model="virtio", autodeflate="on", freePageReporting="on")
        ET.SubElement(balloon, "stats", period="2")
        vmem = ET.SubElement(devices, "memory", model="virtio-mem")
        target = ET.SubElement(vmem, "target")
        ET.SubElement(target, "size", unit="MiB").text = str(device_mb)
        ET.SubElement(target, "node").text = "0"
        ET.SubElement(target, "block", unit="KiB").text = str(BLOCK_MIB * 1024)
        ET.SubElement(target, "requested", unit="KiB").text = "0"
    else:
        ET.SubElement(devices, "memballoon", model="none")
    seclabel = ET.SubElement(d, "seclabel", type="static", model="dac", relabel="no")
    ET.SubElement(seclabel, "label").text = f"+{os.getuid()}:+{os.getgid()}"
    return ET.tostring(d, encoding="unicode")


def check_memory(memory_mb: int, max_memory_mb: int | None) -> int:
    """The virtio-mem device's size in MiB for boot RAM ``memory_mb`` and maximum ``max_memory_mb`` (0: none);
    ValueError for a maximum libvirt or QEMU would refuse."""
    if max_memory_mb is None:
        return 0
    device_mb = max_memory_mb - memory_mb
    if device_mb <= 0:
        raise ValueError(f"the maximum memory ({max_memory_mb} MiB) must be above the boot memory ({memory_mb} MiB)")
    if device_mb % BLOCK_MIB:
        raise ValueError(
            f"maximum − boot memory ({device_mb} MiB) must be a multiple of virtio-mem's {BLOCK_MIB} MiB block"
        )
    return device_mb


def started_by_us(settings_text: str | None) -> bool:
    """True for a domain ``hotplug libvirt start`` made (its settings element says so)."""
    if not settings_text:
        return False
    try:
        return parse_xml(settings_text).get("started-by") == STARTED_BY
    except ET.ParseError:
        return False


def initial_settings(max_vcpus: int) -> Settings:
    return Settings(enabled=True, min_vcpus=1, max_vcpus=max_vcpus)


class GuestChannel:
    """The test guest's control port: what it says (QEMU copies it to ``log``) and a socket to talk to it."""

    def __init__(self, log: str | Path, sock: str | Path | None = None) -> None:
        self.log = Path(log)
        self.sock = Path(sock) if sock else None

    def size(self) -> int:
        return file_size(self.log)

    def lines_since(self, offset: int) -> list[str]:
        """Complete lines written after byte ``offset``."""
        return lines_since(self.log, offset)

    def ready(self) -> bool:
        return any(line.startswith("INIT-READY") for line in self.lines_since(0))

    def last_stat(self, tail_bytes: int = 16384) -> GuestStat | None:
        """The guest's latest STAT line (``guest_reading``'s first half)."""
        return self.guest_reading(tail_bytes)[0]

    def guest_reading(self, tail_bytes: int = 16384) -> tuple[GuestStat | None, int | None]:
        """The guest's latest STAT line, and its runnable tasks as its latest line says them (``reading_of``)."""
        return reading_of(self.lines_since(max(0, self.size() - tail_bytes)))

    def fresh_stat(self, timeout_s: float = 2.5) -> GuestStat | None:
        """The first STAT line the guest writes from now on (it writes one a second), else the last one."""
        mark = self.size()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines_since(mark):
                stat = parse_stat(line.strip())
                if stat is not None:
                    return stat
            time.sleep(0.05)
        return self.last_stat()

    def send(self, command: str) -> None:
        """Run ``command`` in the guest; back once the guest has read it (``shared.qemu.vm.send_line``)."""
        if self.sock is None:
            raise OSError("this guest has no control socket")
        send_line(self.sock, command)

    def ask(self, command: str, timeout_s: float = 10.0) -> str | None:
        """Run ``command`` in the guest; its first output line, or None when it does not answer in time."""
        mark = self.size()
        self.send(command)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines_since(mark):
                if line.startswith("OUT "):
                    return line[4:].strip()
            time.sleep(0.05)
        return None
