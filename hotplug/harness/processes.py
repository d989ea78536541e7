"""Child processes: the command line of ``python -m hotplug``, a service with its metrics port and log file, a
long command whose output lines are awaited, and starting and stopping asyncio children (the supervisor's).

Synchronous methods are for tests and the synchronous benchmark; a coroutine uses the ``async`` ones, which
wait on a thread or with asyncio so that its event loop keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from hotplug.harness.poll import wait_until, within
from hotplug.harness.scrape import scrape

log = logging.getLogger(__name__)

# The checkout: children run from here so that ``-m hotplug`` finds this tree.
REPO = Path(__file__).resolve().parents[2]


def hotplug_argv(*args: str, prefix: Sequence[str] = ()) -> list[str]:
    """``python [prefix] -m hotplug args``, with this interpreter (``prefix``: e.g. ``-m cProfile -o x.prof``)."""
    return [sys.executable, *prefix, "-m", "hotplug", *args]


def child_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (this process's environment by default) with ``extra``, and Python output unbuffered, so a
    child's log lines appear as they are written."""
    return {**(os.environ if base is None else base), "PYTHONUNBUFFERED": "1", **(extra or {})}


def run_hotplug(
    *args: str, timeout: float = 60.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one ``hotplug`` command to its end, ``env`` added to this process's environment; its output
    captured as text."""
    return subprocess.run(
        hotplug_argv(*args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=None if env is None else child_env(env),
    )


def stop_popen(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout_s: float = 10.0) -> None:
    """SIGTERM a child, and SIGKILL it if it has not exited after ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def sigkill(pid: int) -> None:
    """SIGKILL ``pid``, as a crash would end it; gone already is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# The flag every service takes its metrics port from (generated from ``metrics_port`` in shared.config.schema):
# children are started with it, and a supervisor moves a restarting child to another port through it.
METRICS_PORT_FLAG = "--metrics-port"

# The line every service logs once its metrics endpoint listens (shared.runtime.run_service).
_METRICS_LINE = re.compile(r" metrics: (http://[^\s]+:(\d+)/metrics)$", re.MULTILINE)


class ServiceProcess:
    """One ``python -m hotplug <service> ... --metrics-port N`` child, its output in a log file; ready once its
    metrics endpoint answers.

    Without ``metrics_port`` the child binds a port the kernel picks (``--metrics-port 0``) and says it in its log,
    where it is read: a port chosen here and handed over could be taken by another process before the child binds
    it, and then the other process's endpoint would answer for a child that died of ``Address already in use``."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        metrics_port: int | None = None,
        env: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.name = args[0]
        self.log_path = log_path
        self._port = metrics_port
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                hotplug_argv(*args, METRICS_PORT_FLAG, str(metrics_port or 0), prefix=prefix),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env(env),
                cwd=REPO,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _said_port(self) -> int | None:
        """The metrics port: the one given, or the one the child's log says it bound (None until it says)."""
        if self._port is None and (found := _METRICS_LINE.search(self.log())):
            self._port = int(found.group(2))
        return self._port

    @property
    def port(self) -> int:
        port = self._said_port()
        if port is None:
            raise AssertionError(f"{self.name} has not said its metrics port yet (wait_ready first):\n{self.log()}")
        return port

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
        if self._said_port() is None:
            return False
        try:
            scrape(self.metrics_url)
        except OSError:
            return False
        return True

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until the metrics endpoint answers; ``AssertionError`` with the log if the child exits first
        or ``timeout`` passes."""
        if not wait_until(self._ready, timeout, 0.1):
            raise AssertionError(f"{self.name} not ready in {timeout} s:\n{self.log()}")

    async def ready(self, timeout_s: float = 20.0) -> None:
        """``wait_ready`` for a coroutine."""
        if not await within(timeout_s, lambda: asyncio.to_thread(self._ready), 0.1):
            raise AssertionError(f"{self.name} not ready in {timeout_s} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL, and wait for the child to be gone."""
        sigkill(self.proc.pid)
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> None:
        stop_popen(self.proc, timeout_s)

    async def stop_async(self, timeout_s: float = 10.0) -> None:
        await asyncio.to_thread(self.stop, timeout_s)


class OutputProcess:
    """A long-running command (``hotplug up``) whose combined output is collected on a thread, so a test can
    wait for lines; stopped with SIGINT, as a user's Ctrl-C."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            list(argv),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=child_env(env),
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    @classmethod
    def hotplug(cls, *args: str, env: Mapping[str, str] | None = None) -> OutputProcess:
        return cls(hotplug_argv(*args), env)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> re.Match[str]:
        """The first line from index ``after`` on that matches ``pattern``, waiting up to ``timeout`` seconds."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found.extend(m for line in self.lines[after:] if (m := re.search(pattern, line)))
            return bool(found)

        if not wait_until(seen, timeout, 0.05):
            raise AssertionError(f"no line matching {pattern!r} in {timeout} s; output:\n" + self.text())
        return found[0]

    def text(self) -> str:
        return "\n".join(self.lines)

    def interrupt(self, timeout_s: float = 60.0) -> int:
        """Ctrl-C (SIGINT) unless it has ended already; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout_s)


async def spawn(
    argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """An asyncio child appending its output to ``log_path``, in a session of its own: Ctrl-C reaches the
    parent only, which stops its children itself."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=None if env is None else dict(env),
            start_new_session=True,
        )


async def terminate(proc: asyncio.subprocess.Process, timeout_s: float = 30.0) -> None:
    """SIGTERM an asyncio child and wait; kill its process group if it takes longer than ``timeout_s``."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    await await_exit(proc, timeout_s)


async def await_exit(proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    """Wait for a child told to stop; kill its process group if it takes longer than ``timeout_s``."""
    try:
        await asyncio.wait_for(proc.wait(), timeout=timeout_s)
    except TimeoutError:
        log.warning("pid %d did not stop in %.0f s; killing it", proc.pid, timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def policy_args(policy: str, params: Mapping[str, object]) -> list[str]:
    """``--policy P --param k=v ...``: the policy options of ``hotplug decider``, ``up`` and ``bench``."""
    return ["--policy", policy, *(arg for key, value in params.items() for arg in ("--param", f"{key}={value}"))]
