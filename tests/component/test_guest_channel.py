"""The host's side of the test guest's control channel (``shared.qemu.vm.send_line``) against a fake QEMU: one that,
as QEMU's serial port does, says the guest's output on the connection a byte per non-blocking write and stops while
a write would block. A long command's acknowledgement, with a STAT line or two before it, comes through only if the
host reads the connection as it waits; a partial ``GOT`` is no acknowledgement; a closed connection is an error.
Sockets and a thread: not the unit tier (``tests/unit/test_guest_ack.py`` has the pure part)."""

from __future__ import annotations

import select
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.qemu.vm import send_line

STAT = (
    "STAT up=1234.56 online=0-1 running=2 cpu0=123456 cpu1=65432 hz=100 mem_total=1536000 mem_avail=1200000 "
    "swap_in=0 swap_out=0 oom_kill=0 psi_mem=0.00 psi_mem_total=123456\n"
)
LONG = "echo " + "x" * 290 + " && echo long"  # 309 characters: its GOT alone is more than an unread socket takes


class FakeQemu(threading.Thread):
    """Accepts one connection on ``path``, reads a line from it, then says ``before`` and ``GOT <what it read, less
    its first ``cut`` characters>`` a byte per non-blocking write, waiting while a write would block (QEMU's serial
    port waits for the socket to take its byte); or, with ``hang_up``, closes the connection instead. Each byte
    taken is also added to ``log``, if given, as QEMU's ``logfile`` does."""

    def __init__(
        self, path: Path, before: bytes = b"", cut: int = 0, hang_up: bool = False, log: Path | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.before, self.cut, self.hang_up, self.log = before, cut, hang_up, log
        self.said_all = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(10)
            line = b""
            while not line.endswith(b"\n"):
                line += conn.recv(1)
            if self.hang_up:
                return
            conn.setblocking(False)
            for byte in self.before + b"GOT " + line[self.cut :]:
                while not self.done.is_set():
                    try:
                        conn.send(bytes([byte]))
                        if self.log is not None:
                            with self.log.open("ab") as log:
                                log.write(bytes([byte]))
                        break
                    except BlockingIOError:
                        select.select([], [conn], [], 0.1)
            self.said_all.set()
            self.done.wait(10)  # the host hangs up, not QEMU

    def close(self) -> None:
        self.done.set()
        self.join(10)
        self.server.close()


@pytest.fixture
def sock() -> Iterator[Path]:
    # unix socket paths must stay short: not under pytest's deep tmp_path
    with tempfile.TemporaryDirectory(prefix="hq-ack-", dir="/tmp") as d:
        yield Path(d) / "ctl.sock"


def test_a_long_command_is_acknowledged_behind_stat_lines(sock: Path) -> None:
    qemu = FakeQemu(sock, before=STAT.encode() * 2)
    qemu.start()
    try:
        send_line(sock, LONG, timeout_s=10)
        assert qemu.said_all.wait(10)  # the guest's output never stalled: all of it went through
    finally:
        qemu.close()


def test_a_partial_acknowledgement_is_not_one(sock: Path) -> None:
    """A guest that read only the tail of the line (its read cut) says ``GOT <tail>``: the host waits on."""
    qemu = FakeQemu(sock, before=STAT.encode(), cut=10)
    qemu.start()
    try:
        with pytest.raises(TimeoutError):
            send_line(sock, LONG, timeout_s=1.5)
    finally:
        qemu.close()


def test_a_connection_closed_before_the_acknowledgement_is_an_error(sock: Path) -> None:
    qemu = FakeQemu(sock, hang_up=True)
    qemu.start()
    try:
        with pytest.raises(ConnectionError):
            send_line(sock, "cat /proc/meminfo", timeout_s=10)
    finally:
        qemu.close()
