"""Talking to VirtualBox through ``VBoxManage``: the runner, the parsers and the error mapping.

Used by the actuator's ``virtualbox`` driver, the collector's ``virtualbox`` source and ``hotplug vbox``.
Every call is an argument list with a timeout (a VM name is one argument, whatever it contains). Which
CPUs are attached is read from the VM's settings file (``CfgFile``, its ``<CpuTree>``): ``showvminfo``
does not say. A VM's memory sizes (:func:`balloon_sizes`) are computed here for the driver and the collector alike,
and the guest's own memory figures come from VirtualBox's guest metrics (``metrics setup``/``query``,
:func:`parse_metrics_query`). Behaviour follows ``docs/virtualbox.md`` of the workplace (VirtualBox 6.1 and 7.x).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import NotFound
from shared.messages import ErrorCode
from shared.units import MIB

ENV_BINARY = "HOTPLUG_VBOXMANAGE"
DEFAULT_TIMEOUT_S = 30.0
# VirtualBox waits ~10 s for a guest to release a CPU before it gives up; leave room above that.
UNPLUG_TIMEOUT_S = 25.0

# A metrics call answers from VBoxSVC's buffer at once; a slow one is left out of the collector's round.
METRICS_TIMEOUT_S = 5.0

# The guest's memory as the Guest Additions report it, in kB (docs/virtualbox.md §7). ``setup`` takes base names
# only, and enabling any guest metric sets the guest's statistics interval to 1 s.
GUEST_RAM_BASE = "Guest/RAM/Usage"
GUEST_RAM_TOTAL = "Guest/RAM/Usage/Total"
GUEST_RAM_FREE = "Guest/RAM/Usage/Free"
GUEST_RAM_BALLOON = "Guest/RAM/Usage/Balloon"
GUEST_RAM_CACHE = "Guest/RAM/Usage/Cache"
GUEST_RAM_METRICS = (GUEST_RAM_TOTAL, GUEST_RAM_FREE, GUEST_RAM_BALLOON, GUEST_RAM_CACHE)

# Measured on QEMU (shared/docs/memory.md trap 5): a balloon leaving 128 MiB OOM-killed a small Linux guest, 384
# MiB did not. Assumed to hold for VirtualBox's balloon too (not measured: VirtualBox cannot run here).
BALLOON_FLOOR_MB = 256
BALLOON_FLOOR_SHARE = 4

_KB_VALUE = re.compile(r"^([0-9]+) kB$")
_ERROR_LINE = re.compile(r"^VBoxManage(?:\.exe)?: error: (.*)$")
_LIST_LINE = re.compile(r'^"(.*)" \{([0-9a-fA-F-]{36})\}$')

# First matching text wins; CPU 0 comes before "Invalid CPU number" (both print for `unplugcpu 0`).
ERROR_TEXTS: tuple[tuple[str, ErrorCode], ...] = (
    ("Could not find a registered machine", ErrorCode.VM_NOT_FOUND),
    ("Invalid machine name", ErrorCode.VM_NOT_FOUND),
    ("is not currently running", ErrorCode.VM_NOT_RUNNING),
    ("The machine is not mutable or running", ErrorCode.VM_NOT_RUNNING),
    ("Invalid machine state", ErrorCode.VM_NOT_RUNNING),
    ("is already locked for a session", ErrorCode.VM_NOT_RUNNING),
    ("CPU hotplug is not enabled", ErrorCode.HOTPLUG_DISABLED),
    ("It is not possible to detach CPU 0", ErrorCode.CPU0),
    ("CPU id exceeds number of possible CPUs", ErrorCode.CPU_ID_OUT_OF_RANGE),
    ("CPU index exceeds maximum CPU count", ErrorCode.CPU_ID_OUT_OF_RANGE),
    ("Invalid CPU number", ErrorCode.CPU_ID_OUT_OF_RANGE),
    ("is already attached", ErrorCode.ALREADY_ATTACHED),
    ("is not attached", ErrorCode.NOT_ATTACHED),
    ("Hot-Remove was aborted because the CPU may still be used by the guest", ErrorCode.GUEST_REFUSED),
    # the balloon: ≥ 90 % of the VM's RAM, or not a number VBoxManage reads
    ("Invalid memory balloon size", ErrorCode.OUT_OF_BOUNDS),
    ("Error parsing guest memory balloon size", ErrorCode.OUT_OF_BOUNDS),
)


class VBoxError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class VBoxOutput:
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class VmInfo:
    name: str
    uuid: str
    state: str
    cpus: int
    hotplug: bool
    attached: tuple[int, ...]
    cfgfile: str
    memory_mb: int = 0  # the VM's RAM (``memory=``)
    balloon_mb: int = 0  # the configured balloon (``GuestMemoryBalloon=``)
    additions_run_level: int | None = None  # ``GuestAdditionsRunLevel=`` (0: none running); None when not shown

    @property
    def running(self) -> bool:
        return self.state == "running"


def balloon_floor_mb(memory_mb: int) -> int:
    """The smallest size the driver asks for: its floor, never under VirtualBox's (balloon < 90 % of the RAM)."""
    vbox_min = memory_mb - (9 * memory_mb // 10 - 1)
    return min(memory_mb, max(vbox_min, BALLOON_FLOOR_MB, memory_mb // BALLOON_FLOOR_SHARE))


@dataclass(frozen=True)
class BalloonSizes:
    """A VM's memory as the driver reads it, in bytes."""

    size_bytes: int  # the RAM less the configured balloon: the request as VirtualBox took it
    min_bytes: int  # the driver's floor
    max_bytes: int  # the RAM the VM booted with: the balloon only takes from it


def balloon_sizes(info: VmInfo) -> BalloonSizes:
    """The sizes of ``showvminfo``'s ``memory=`` and ``GuestMemoryBalloon=``, which the driver's ``read_memory``
    reports and the collector's source samples (so a command's ``seen_memory_bytes`` is checked against the very
    size it saw). Pure."""
    return BalloonSizes(
        size_bytes=(info.memory_mb - info.balloon_mb) * MIB,
        min_bytes=balloon_floor_mb(info.memory_mb) * MIB,
        max_bytes=info.memory_mb * MIB,
    )


def parse_metrics_query(text: str, names: Iterable[str]) -> dict[str, int]:
    """The newest value of each of ``names`` (kB metrics) in ``metrics query`` output; a metric with no value (no
    data yet, no Guest Additions) or one of another unit is left out. Pure.

    A line is the object (a VM's name, unescaped, spaces and all, overflowing its column), the metric and the values
    oldest first, joined by ``", "``: the metric is found as a whole token, the last one on the line (values hold no
    ``/``), rather than by splitting on whitespace."""
    out: dict[str, int] = {}
    wanted = list(names)
    for line in text.splitlines():
        for name in wanted:
            matches = list(re.finditer(rf"(?:^|\s){re.escape(name)}(?=\s|$)", line))
            if not matches:
                continue
            values = line[matches[-1].end() :].strip()
            value = _KB_VALUE.match(values.rsplit(",", 1)[-1].strip()) if values else None
            if value is not None:
                out[name] = int(value.group(1))
    return out


def error_messages(stderr: str) -> list[str]:
    """The texts of ``VBoxManage: error:`` lines, without their Details and Context lines."""
    out = []
    for line in stderr.splitlines():
        match = _ERROR_LINE.match(line.strip())
        if match and not match.group(1).startswith(("Details:", "Context:", "--------")):
            out.append(match.group(1))
    return out


def classify(stderr: str) -> VBoxError:
    """A failed call's stable error code, keeping VBoxManage's own message."""
    messages = error_messages(stderr)
    text = "\n".join(messages) or stderr.strip() or "VBoxManage failed without a message"
    for needle, code in ERROR_TEXTS:
        if any(needle in m for m in messages):
            return VBoxError(code, text)
    return VBoxError(ErrorCode.UNKNOWN, text)


def parse_machinereadable(text: str) -> dict[str, str]:
    """``key="value"`` / ``key=number`` lines; lines without ``=`` (7.0's ``Encryption:``) are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if "=" not in line:
            continue
        if line.startswith('"'):  # a key that contains '=' is itself quoted
            match = re.match(r'^"((?:[^"\\]|\\.)*)"=(.*)$', line)
            if not match:
                continue
            key, value = _unquote(match.group(1)), match.group(2)
        else:
            key, _, value = line.partition("=")
        out[key] = _unquote(value) if value.startswith('"') else value
    return out


def _unquote(value: str) -> str:
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        value = value[1:-1]
    return re.sub(r"\\(.)", r"\1", value)


def parse_list(text: str) -> list[tuple[str, str]]:
    """``list vms|runningvms`` → [(name, uuid)]. Names are not escaped, so anchor on the UUID at the end."""
    out = []
    for line in text.splitlines():
        match = _LIST_LINE.match(line.rstrip("\r"))
        if match:
            out.append((match.group(1), match.group(2).lower()))
    return out


def read_cpu_tree(cfgfile: str | Path) -> tuple[bool, tuple[int, ...]]:
    """(hot-plug enabled, attached CPU ids) from a ``.vbox`` settings file."""
    root = ET.parse(cfgfile).getroot()  # noqa: S314 (a local settings file written by VirtualBox)
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "CPU":
            hotplug = element.get("hotplug") == "true"
            count = int(element.get("count", "1"))
            tree = [e for e in element.iter() if e.tag.rsplit("}", 1)[-1] == "Cpu"]
            if hotplug:
                return True, tuple(sorted(int(e.get("id", "-1")) for e in tree))
            return False, tuple(range(count))
    return False, (0,)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def find_vboxmanage() -> str:
    for candidate in (os.environ.get(ENV_BINARY), shutil.which("VBoxManage"), shutil.which("vboxmanage")):
        if candidate:
            return candidate
    raise NotFound(f"VBoxManage not found: install VirtualBox or set ${ENV_BINARY}")


class VBoxManage:
    """Async runner of VBoxManage commands."""

    def __init__(self, binary: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.binary = binary or find_vboxmanage()
        self.timeout_s = timeout_s

    async def run(self, *args: str, timeout_s: float | None = None) -> VBoxOutput:
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            "-q",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s or self.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise VBoxError(
                ErrorCode.TIMEOUT,
                f"VBoxManage {' '.join(args[:2])} did not finish in {timeout_s or self.timeout_s:.0f} s",
            ) from None
        assert proc.returncode is not None
        return VBoxOutput(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))

    async def check(self, *args: str, timeout_s: float | None = None) -> str:
        result = await self.run(*args, timeout_s=timeout_s)
        if result.returncode != 0:
            raise classify(result.stderr)
        return result.stdout

    async def info(self, vm: str) -> VmInfo:
        fields = parse_machinereadable(await self.check("showvminfo", vm, "--machinereadable"))
        cfgfile = fields.get("CfgFile", "")
        cpus = int(fields.get("cpus", "1"))
        try:
            hotplug, attached = read_cpu_tree(cfgfile)
        except (OSError, ET.ParseError) as exc:
            raise VBoxError(ErrorCode.UNKNOWN, f"cannot read the settings file {cfgfile!r}: {exc}") from exc
        return VmInfo(
            name=fields.get("name", vm),
            uuid=fields.get("UUID", ""),
            state=fields.get("VMState", ""),
            cpus=cpus,
            hotplug=hotplug,
            attached=attached,
            cfgfile=cfgfile,
            memory_mb=_int(fields.get("memory")) or 0,
            balloon_mb=_int(fields.get("GuestMemoryBalloon", fields.get("guestmemoryballoon"))) or 0,
            additions_run_level=_int(fields.get("GuestAdditionsRunLevel")),
        )

    async def list(self, which: str = "vms") -> list[tuple[str, str]]:
        return parse_list(await self.check("list", which))

    async def plugcpu(self, vm: str, cpu: int) -> None:
        await self.check("controlvm", vm, "plugcpu", str(cpu))

    async def guestmemoryballoon(self, vm: str, mb: int) -> None:
        """Set the balloon to ``mb`` MB: the memory taken from the guest (needs the Guest Additions)."""
        await self.check("controlvm", vm, "guestmemoryballoon", str(mb))

    async def setup_guest_ram_metrics(self, vm: str) -> None:
        """Have VirtualBox collect the guest's memory figures, one sample a second (for this run of the VM: its
        metrics are discarded when it stops)."""
        await self.check(
            "metrics", "setup", "--period", "1", "--samples", "1", vm, GUEST_RAM_BASE, timeout_s=METRICS_TIMEOUT_S
        )

    async def guest_ram_kb(self, vm: str) -> dict[str, int]:
        """The guest's latest memory figures (kB, keyed by metric name); empty while there are none."""
        text = await self.check("metrics", "query", vm, ",".join(GUEST_RAM_METRICS), timeout_s=METRICS_TIMEOUT_S)
        return parse_metrics_query(text, GUEST_RAM_METRICS)

    async def unplugcpu(self, vm: str, cpu: int) -> None:
        await self.check("controlvm", vm, "unplugcpu", str(cpu), timeout_s=max(self.timeout_s, UNPLUG_TIMEOUT_S))
