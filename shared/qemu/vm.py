"""Running QEMU guests: start, find, stop, talk QMP, and read or drive the guest's control channel.

Each VM lives in ``<root>/<name>/``: ``qmp.sock`` (control: the actuator and ``hotplug qemu``),
``monitor.sock`` (a second QMP monitor for reads: the collector's, and the actuator's host view, so they never wait
behind a resize or an unplug),
``ctl.sock`` (the guest's ttyS1; QEMU also copies all it says to ``ctl.log``, read without connecting),
``console.log`` and ``state.json``. ``state.json`` counts ``device_add`` calls: under TCG each VM allows only
``maxcpus`` − boot vCPUs hot-adds in its lifetime (QEMU aborts past that), so the budget is kept here. It also
records the memory layout the VM was started with (boot RAM, a virtio-mem device, a balloon): QEMU cannot be asked
for it all (docs/hypervisors/qemu.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
from qemu.qmp import ConnectError, QMPClient
from qemu.qmp.qmp_client import GreetingError, NegotiationError

from shared.qemu.image import GuestImage
from shared.qemu.memory import MemoryLayoutError, memory_options
from shared.units import KIB, MIB

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
BOOT_TIMEOUT_S = 60.0
QMP_CONNECT_TIMEOUT_S = 10.0
QMP_CONNECT_ATTEMPTS = 5
LIFETIME_MAXCPUS = 32
UNIX_PATH_MAX = 107
# How long a command may wait for a starved TCG guest to read it from its control channel (send_line).
SEND_TIMEOUT_S = 60.0
DIR_ENV = "HOTPLUG_QEMU_DIR"  # where guests live: ``hotplug qemu``, the source and the driver read it
# Hot-added memory goes to ZONE_MOVABLE, so all of it can be given back (this kernel onlines nothing by itself:
# docs/hypervisors/qemu.md, Memory). Harmless on a guest without virtio-mem.
KERNEL_APPEND = "console=ttyS0 panic=-1 quiet memhp_default_state=online_movable"


class QemuError(RuntimeError):
    pass


class VmState(msgspec.Struct):
    name: str
    pid: int
    max_vcpus: int
    boot_vcpus: int
    maxcpus: int
    adds: int = 0
    started_at: float = 0.0
    # Memory (0/False in state files written before memory was recorded: no device, boot RAM unknown).
    memory_bytes: int = 0  # boot RAM (-m)
    vmem_bytes: int = 0  # the virtio-mem device's size, the most it can plug; 0: no device
    balloon: bool = False
    balloon_target_bytes: int = 0  # the balloon's last target (QEMU reports only where it is); 0: none set

    @property
    def adds_left(self) -> int:
        return self.maxcpus - self.boot_vcpus - self.adds


@dataclass(frozen=True)
class GuestStat:
    """The guest's own view, from its latest STAT line."""

    uptime: float
    online: tuple[int, ...]
    running: int
    busy_ticks: dict[int, int]
    hz: int
    # /proc/meminfo, /proc/vmstat and /proc/pressure/memory; None from a guest that does not report them
    mem_total_kb: int | None = None
    mem_available_kb: int | None = None
    swap_in: int | None = None  # pages swapped in since boot
    swap_out: int | None = None
    psi_memory_some_avg10: float | None = None  # % of the last 10 s some task waited for memory
    psi_memory_some_total_us: int | None = None  # microseconds some task waited for memory since boot
    oom_kills: int | None = None  # processes the guest's OOM killer took since boot (/proc/vmstat oom_kill)

    @property
    def mem_total_bytes(self) -> int | None:
        return None if self.mem_total_kb is None else self.mem_total_kb * KIB

    @property
    def mem_available_bytes(self) -> int | None:
        return None if self.mem_available_kb is None else self.mem_available_kb * KIB


def default_root() -> Path:
    env = os.environ.get(DIR_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hotplug-heaven" / "qemu"


def find_qemu() -> str:
    found = os.environ.get("HOTPLUG_QEMU") or shutil.which("qemu-system-x86_64")
    if not found:
        raise QemuError(
            "qemu-system-x86_64 not found: install QEMU ≥ 8 (on Debian 12: qemu-system-x86 from "
            "bookworm-backports; bookworm's 7.2 crashes on re-plug)"
        )
    return found


def parse_cpu_list(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.strip().split(","):
        if part:
            low, _, high = part.partition("-")
            out.extend(range(int(low), int(high or low) + 1))
    return tuple(out)


def parse_stat(line: str) -> GuestStat | None:
    """``STAT up=12.07 online=0-1 running=3 cpu0=315 cpu1=185 hz=100`` → GuestStat; None if malformed. The memory
    fields (``mem_total=<kB> mem_avail=<kB> swap_in= swap_out= oom_kill= psi_mem= psi_mem_total=``) are optional:
    older guests lack them."""
    if not line.startswith("STAT "):
        return None
    fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)

    def optional(key: str) -> int | None:
        return int(fields[key]) if key in fields else None

    try:
        busy = {int(k[3:]): int(v) for k, v in fields.items() if k.startswith("cpu") and k[3:].isdigit()}
        return GuestStat(
            float(fields["up"]),
            parse_cpu_list(fields["online"]),
            int(fields["running"]),
            busy,
            int(fields.get("hz", "100")),
            mem_total_kb=optional("mem_total"),
            mem_available_kb=optional("mem_avail"),
            swap_in=optional("swap_in"),
            swap_out=optional("swap_out"),
            psi_memory_some_avg10=float(fields["psi_mem"]) if "psi_mem" in fields else None,
            psi_memory_some_total_us=optional("psi_mem_total"),
            oom_kills=optional("oom_kill"),
        )
    except (KeyError, ValueError):
        return None


def send_line(sock: Path, line: str, timeout_s: float = SEND_TIMEOUT_S) -> None:
    """Write one command ``line`` to the test guest's control port (``sock``) and keep the connection open until
    the guest says on it that it has read the line (``GOT <line>``: shared/qemu/init.sh).

    QEMU passes a socket's bytes on only as fast as the guest's UART takes them (a 16-byte FIFO), and drops what it
    has not passed on when the connection closes. The connection used to close 0.1 s after the write: a guest slow
    to read (a TCG guest onlining a new vCPU on a starved machine) lost the tail of a line, and the next command
    arrived glued to its head ("cat: can't open '/syscat'"). So it stays open until the guest has read the line.

    While it is open, QEMU sends this connection everything the guest says, a byte per write, and the guest's UART
    stops as soon as one would block: a unix socket takes about 278 one-byte writes unread (each is charged a whole
    buffer against the 208 KiB send limit). All is read here as it comes and the acknowledgement is looked for in
    it: a connection held unread stopped the guest's output, its ``GOT`` line with it, until the host hung up (a
    command of about 275 characters or more never, a shorter one whenever a STAT line came first).
    ``TimeoutError`` if the guest does not say it read the line in ``timeout_s``; ``ConnectionError`` if QEMU
    closes the connection first."""
    if "\n" in line:
        raise ValueError("one line at a time")
    heard = Acknowledgement(line)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(line.encode() + b"\n")
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the guest did not read {line!r} from its control channel in {timeout_s:g} s")
            s.settimeout(min(left, 1.0))
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise ConnectionError(f"QEMU closed the guest's control channel before the guest read {line!r}")
            if heard.feed(data):
                return


class LineSplitter:
    """The complete lines in what the guest says, taken in pieces cut anywhere (a read ends mid-line, a connection
    opens mid-line). Pure. ``mid_line``: the first bytes fed may start inside a line (a log followed from where it
    ended, a connection opened at any moment), so they count only from the first line break on."""

    def __init__(self, mid_line: bool = False) -> None:
        self._partial = b""
        self._skip_head = mid_line

    def feed(self, data: bytes) -> list[str]:
        """Take the next bytes said; the lines they complete, without their line breaks."""
        *complete, self._partial = (self._partial + data).split(b"\n")
        if self._skip_head and complete:
            complete = complete[1:]
            self._skip_head = False
        return [line.decode(errors="replace") for line in complete]


class Acknowledgement:
    """Watches what the guest says on a control connection for the whole line ``GOT <line>``. Pure.

    The stream is cut anywhere (the connection may open in the middle of a STAT line, and a line may come in
    several reads), so only complete lines count, and only one equal to the acknowledgement: a ``GOT`` of part of
    the line (a guest that lost its head) is not one."""

    def __init__(self, line: str) -> None:
        # the guest's ``read -r`` drops the line's leading and trailing blanks
        self.expected = f"GOT {line.strip()}"
        self._lines = LineSplitter()

    def feed(self, data: bytes) -> bool:
        """Take the next bytes said; True once the acknowledgement has been said in full."""
        return any(said.strip() == self.expected for said in self._lines.feed(data))


@dataclass(frozen=True)
class PsiReport:
    """The guest's word that a CPU-bound task waited: its ``PSI cpu stall_us=<us> window_ms=<ms>`` line."""

    stall_us: int  # microseconds some runnable task waited for a CPU within the window (PSI cpu some)
    window_ms: int
    # Runnable tasks as the line was said (/proc/loadavg's, the watcher's own shell among them); None: not said.
    running: int | None = None


def parse_psi(line: str) -> PsiReport | None:
    """``PSI cpu stall_us=23000 window_ms=100 [running=3]`` → PsiReport; None for any other line, or a malformed
    one."""
    if not line.startswith("PSI cpu "):
        return None
    fields = dict(part.split("=", 1) for part in line.split()[2:] if "=" in part)
    try:
        running = int(fields["running"]) if "running" in fields else None
        return PsiReport(int(fields["stall_us"]), int(fields["window_ms"]), running)
    except (KeyError, ValueError):
        return None


def latest_running(lines: Sequence[str]) -> int | None:
    """The guest's runnable tasks as its latest line that says them (a STAT line, or a PSI line with ``running``)
    put them; None if none does. A PSI line is said the moment a load comes, a STAT line up to a second later."""
    for line in reversed(lines):
        text = line.strip()
        stat = parse_stat(text)
        if stat is not None:
            return stat.running
        psi = parse_psi(text)
        if psi is not None and psi.running is not None:
            return psi.running
    return None


def reading_of(lines: Sequence[str]) -> tuple[GuestStat | None, int | None]:
    """The latest STAT line of a guest's ``lines``, and its runnable tasks as its latest line says them
    (``latest_running``: on an urgent round, the PSI line said as the load came)."""
    stat = next((s for s in (parse_stat(line.strip()) for line in reversed(lines)) if s is not None), None)
    return stat, latest_running(lines)


def file_size(path: Path) -> int:
    """The size of ``path`` in bytes; 0 while it does not exist."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def lines_since(log: Path, offset: int) -> list[str]:
    """Complete lines written to ``log`` after byte ``offset``."""
    try:
        with log.open("rb") as f:
            f.seek(offset)
            data: bytes = f.read()
    except OSError:
        return []
    return data.decode(errors="replace").split("\n")[:-1]


class QemuVm:
    def __init__(self, name: str, root: Path | None = None) -> None:
        if not NAME_PATTERN.match(name):
            raise QemuError(f"invalid QEMU VM name {name!r}: use letters, digits, '_', '.', '-' (max 63)")
        self.name = name
        self.root = root or default_root()
        self.dir = self.root / name

    @property
    def qmp_path(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def monitor_path(self) -> Path:
        return self.dir / "monitor.sock"

    @property
    def ctl_path(self) -> Path:
        return self.dir / "ctl.sock"

    @property
    def ctl_log(self) -> Path:
        return self.dir / "ctl.log"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    # ---- lifecycle ------------------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        name: str,
        image: GuestImage,
        *,
        max_vcpus: int,
        vcpus: int = 1,
        memory_mb: int = 256,
        root: Path | None = None,
        boot_timeout_s: float = BOOT_TIMEOUT_S,
        maxcpus: int = LIFETIME_MAXCPUS,
        max_memory_mb: int | None = None,
        plugged_mb: int = 0,
        balloon: bool = False,
    ) -> QemuVm:
        """Boot a guest. ``maxcpus`` is QEMU's: under TCG it also bounds the hot-adds of this run.

        Memory: ``memory_mb`` of boot RAM; with ``max_memory_mb``, a virtio-mem device (``vmem0``) that can plug up
        to ``max_memory_mb`` − ``memory_mb`` more, ``plugged_mb`` of it asked for at boot; with ``balloon``, a
        virtio-balloon (``balloon0``) that gives itself back when the guest would otherwise run out of memory."""
        vm = cls(name, root)
        if not 1 <= vcpus <= max_vcpus <= maxcpus <= 255:
            raise QemuError(f"need 1 <= vcpus <= max_vcpus <= maxcpus <= 255, got {vcpus}, {max_vcpus}, {maxcpus}")
        try:
            memory_args = memory_options(memory_mb, max_memory_mb, plugged_mb, balloon)
        except MemoryLayoutError as exc:
            raise QemuError(str(exc)) from exc
        if vm.running():
            raise QemuError(f"VM {name} is already running (pid {vm.state().pid})")
        if len(str(vm.monitor_path)) > UNIX_PATH_MAX:
            raise QemuError(f"the VM directory {vm.dir} is too deep for unix sockets; set HOTPLUG_QEMU_DIR shorter")
        shutil.rmtree(vm.dir, ignore_errors=True)
        vm.dir.mkdir(parents=True)
        args = [
            find_qemu(),
            "-accel",
            "tcg,thread=multi",
            "-machine",
            "q35",
            "-smp",
            f"{vcpus},maxcpus={maxcpus}",
            *memory_args,
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-name",
            f"{name},debug-threads=on",
            "-kernel",
            str(image.kernel),
            "-initrd",
            str(image.initrd),
            "-append",
            KERNEL_APPEND,
            "-serial",
            f"file:{vm.console_log}",
            "-chardev",
            f"socket,id=ctl,path={vm.ctl_path},server=on,wait=off,logfile={vm.ctl_log}",
            "-serial",
            "chardev:ctl",
            "-qmp",
            f"unix:{vm.qmp_path},server=on,wait=off",
            "-qmp",
            f"unix:{vm.monitor_path},server=on,wait=off",
        ]
        with (vm.dir / "qemu.log").open("wb") as log:
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        vm._write_state(
            VmState(
                name=name,
                pid=proc.pid,
                max_vcpus=max_vcpus,
                boot_vcpus=vcpus,
                maxcpus=maxcpus,
                started_at=time.time(),
                memory_bytes=memory_mb * MIB,
                vmem_bytes=(max_memory_mb - memory_mb) * MIB if max_memory_mb is not None else 0,
                balloon=balloon,
            )
        )
        deadline = time.monotonic() + boot_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise QemuError(
                    f"QEMU exited with {proc.returncode}: {(vm.dir / 'qemu.log').read_text(errors='replace')[-800:]}"
                )
            if vm.ctl_log.exists() and "INIT-READY" in vm.ctl_log.read_text(errors="replace"):
                return vm
            time.sleep(0.05)
        vm.stop()
        raise QemuError(f"guest {name} did not boot within {boot_timeout_s:.0f} s; see {vm.console_log}")

    def state(self) -> VmState:
        try:
            return msgspec.json.decode(self.state_path.read_bytes(), type=VmState)
        except FileNotFoundError:
            raise QemuError(f"no QEMU VM named {self.name} in {self.root}") from None

    def _write_state(self, state: VmState) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(state))
        tmp.replace(self.state_path)

    def update_state(self, change: Callable[[VmState], None]) -> VmState:
        """Change state.json under a lock (the actuator and ``hotplug qemu set`` may both resize)."""
        with (self.dir / "state.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.state()
            change(state)
            self._write_state(state)
            return state

    def running(self) -> bool:
        try:
            pid = self.state().pid
        except QemuError:
            return False
        try:
            os.kill(pid, 0)
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except (ProcessLookupError, FileNotFoundError, IndexError):
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.running():
            return
        pid = self.state().pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # ---- QMP and the guest ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def qmp(self, monitor: bool = False) -> AsyncIterator[QMPClient]:
        """A QMP session on the control socket (or the monitoring one), closed on exit."""
        if not await asyncio.to_thread(self.running):  # reads state.json and /proc
            raise QemuError(f"VM {self.name} is not running")
        client = await connect_qmp(self.name, self.monitor_path if monitor else self.qmp_path)
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()

    def send(self, command: str) -> None:
        """Write one command line to the guest's control channel; back once the guest has read it."""
        send_line(self.ctl_path, command)

    def guest_lines(self, tail_bytes: int = 16384) -> list[str]:
        try:
            with self.ctl_log.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
                data: bytes = f.read()
        except FileNotFoundError:
            return []
        return data.decode(errors="replace").splitlines()

    def guest_log_size(self) -> int:
        return file_size(self.ctl_log)

    def guest_lines_since(self, offset: int) -> list[str]:
        """Complete lines the guest wrote after byte ``offset`` of its control log."""
        return lines_since(self.ctl_log, offset)

    def first_guest_stat(self, head_bytes: int = 8192) -> GuestStat | None:
        """The guest's first STAT line of this boot (its memory as it booted), if it said one yet."""
        try:
            with self.ctl_log.open("rb") as f:
                data: bytes = f.read(head_bytes)
        except FileNotFoundError:
            return None
        stats = (parse_stat(line.strip()) for line in data.decode(errors="replace").splitlines())
        return next((stat for stat in stats if stat is not None), None)

    def guest_stat(self) -> GuestStat | None:
        return self.guest_reading()[0]

    def guest_reading(self) -> tuple[GuestStat | None, int | None]:
        """The guest's latest STAT line, and its runnable tasks as its latest line says them (``reading_of``)."""
        return reading_of(self.guest_lines())


def vcpu_threads(pid: int, proc: Path = Path("/proc")) -> set[int] | None:
    """The vCPU ids whose QEMU thread exists (``CPU <id>/TCG`` or ``/KVM``, named so by ``debug-threads=on``, which
    ``hotplug qemu`` and libvirt both set); None when QEMU cannot be read."""
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return None
    out = set()
    for task in tasks:
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended between listing and reading
        if name.startswith("CPU ") and "/" in name:
            index = name[4:].split("/", 1)[0]
            if index.isdigit():
                out.add(int(index))
    return out


def running_vms(root: Path | None = None) -> list[QemuVm]:
    root = root or default_root()
    if not root.is_dir():
        return []
    vms = []
    for d in sorted(root.iterdir()):
        if (d / "state.json").exists() and NAME_PATTERN.match(d.name):
            vm = QemuVm(d.name, root)
            if vm.running():
                vms.append(vm)
    return vms


def _event_in_handshake(exc: ConnectError) -> bool:
    """Whether a connection failed because an event came where the greeting or the negotiation's answer should."""
    cause = exc.exc
    return isinstance(cause, GreetingError) or (
        isinstance(cause, NegotiationError) and isinstance(cause.exc, AssertionError)
    )


async def connect_qmp(name: str, path: Path, attempts: int = QMP_CONNECT_ATTEMPTS) -> QMPClient:
    """A connected QMP client on the socket at ``path``.

    QEMU may write an event (say the ``ACPI_DEVICE_OST`` of a ``device_del`` made on the previous connection) to
    a new connection before its greeting, which ``QMPClient`` rejects as a bad greeting, or before its answer to
    ``qmp_capabilities``, which ``QMPClient`` takes for that answer and rejects (an ``AssertionError`` within a
    ``NegotiationError``; seen in CI against an actuator whose connection followed another client's). That
    connection is then dropped and a new one made: its handshake comes first unless another event races it again.
    """
    attempt = 1
    while True:
        client = QMPClient(name)
        try:
            await asyncio.wait_for(client.connect(str(path)), timeout=QMP_CONNECT_TIMEOUT_S)
            return client
        except ConnectError as exc:
            if not _event_in_handshake(exc) or attempt >= attempts:
                raise QemuError(f"QMP connection to {name} failed: {exc}") from exc
        with contextlib.suppress(Exception):
            await client.disconnect()
        attempt += 1
