"""Runs each service as its own process and restarts one that dies, with back-off.

A child that exits while the supervisor is not stopping is logged and started again after a delay that
doubles from ``initial_backoff_s`` up to ``max_backoff_s``; the delay resets once the child has stayed up
for ``healthy_after_s``. Each child's output goes to ``<log_dir>/<name>.log``.

A child restarts on the same metrics port (a scrape target stays put) unless another process has taken that port
meanwhile (its port was chosen before it bound it, or freed when it died): then on a free one, said in a warning,
rather than dying of ``Address already in use`` at every restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from hotplug.harness import processes
from hotplug.harness.processes import METRICS_PORT_FLAG
from shared.broker import free_port, port_is_free

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    argv: list[str]
    metrics_port: int
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    env: dict[str, str] | None = None  # added to the supervisor's (e.g. this service's own credentials)
    retired: bool = False
    exits: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        log_dir: Path,
        *,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        healthy_after_s: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.healthy_after_s = healthy_after_s
        self.env = env
        self.children: dict[str, Child] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self, name: str, argv: list[str], metrics_port: int, env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, metrics_port, env=env)
        self.children[name] = child
        await self._spawn(child)
        self._watchers.append(asyncio.ensure_future(self._watch(child)))
        return child

    async def _spawn(self, child: Child) -> None:
        child.process = await processes.spawn(child.argv, self.log_dir / f"{child.name}.log", self._env_of(child))
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def _env_of(self, child: Child) -> dict[str, str] | None:
        if child.env is None:
            return self.env
        return {**(self.env if self.env is not None else os.environ), **child.env}

    async def retire(self, name: str, timeout_s: float = 30.0) -> None:
        """Stop one child for good: it is not restarted."""
        child = self.children[name]
        child.retired = True
        if child.process is not None:
            await processes.terminate(child.process, timeout_s)

    async def _watch(self, child: Child) -> None:
        backoff = self.initial_backoff_s
        while True:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping or child.retired:
                return
            child.exits.append(code)
            if time.monotonic() - child.started_at >= self.healthy_after_s:
                backoff = self.initial_backoff_s
            log.warning(
                "%s exited with code %d; restarting in %.1f s (see %s)",
                child.name,
                code,
                backoff,
                self.log_dir / f"{child.name}.log",
            )
            await asyncio.sleep(backoff)
            if self.stopping:
                return
            backoff = min(backoff * 2, self.max_backoff_s)
            child.restarts += 1
            self._move_port_if_taken(child)
            await self._spawn(child)

    def _move_port_if_taken(self, child: Child) -> None:
        argv = child.argv
        if METRICS_PORT_FLAG not in argv[:-1] or port_is_free(child.metrics_port):
            return
        port = free_port()
        log.warning("%s: its metrics port %d is taken; it restarts on port %d", child.name, child.metrics_port, port)
        at = argv.index(METRICS_PORT_FLAG) + 1
        child.argv = [*argv[:at], str(port), *argv[at + 1 :]]
        child.metrics_port = port

    @property
    def stopping(self) -> bool:
        return self._stopping

    def pids(self) -> dict[str, int]:
        return {name: c.process.pid for name, c in self.children.items() if c.process is not None}

    async def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        procs = [c.process for c in self.children.values() if c.process is not None]
        await asyncio.gather(*(processes.terminate(proc, timeout_s) for proc in procs))
