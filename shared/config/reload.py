"""Re-reading the config file on SIGHUP, without a restart: a valid file is handed to the service, an invalid one
is refused (file, line and reason in the log) and the settings in force stay. Both are counted
(``hotplug_config_reloads_total{outcome="ok|invalid"}``).

Only what the service can change while running is taken (the ``[[vm]]`` rules, and the collector's ``[[host]]``
rules); a changed section is said to take effect at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from shared.config.load import ConfigError, LoadedConfig, load
from shared.config.schema import section_values

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "invalid")


class Reloader:
    """Calls ``apply(new)`` with each valid re-read of the file; ``apply`` checks everything before it changes
    anything (raising ``ConfigError`` to refuse), and returns a summary for the log."""

    def __init__(
        self,
        loaded: LoadedConfig | None,
        command: str,
        apply: Callable[[LoadedConfig], str],
        registry: CollectorRegistry,
    ) -> None:
        self.loaded = loaded
        self.command = command
        self.apply = apply
        self.reloads = Counter(
            "hotplug_config_reloads",
            "Config file re-reads on SIGHUP, by outcome (invalid: refused, the old config kept)",
            ["outcome"],
            registry=registry,
        )
        for outcome in OUTCOMES:
            self.reloads.labels(outcome)  # both series exist from the start
        self._tasks: set[asyncio.Task[bool]] = set()

    def install(self) -> None:
        """Re-read the file on every SIGHUP (the running loop's signal handler)."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_signal)

    def _on_signal(self) -> None:
        task = asyncio.ensure_future(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        if self.loaded is None:
            log.warning("SIGHUP: no config file to re-read (start with --config FILE or $HOTPLUG_CONFIG)")
            return False
        path: Path = self.loaded.path
        try:
            new = await asyncio.to_thread(load, path, type(self.loaded.config))  # the keys it started with
            summary = self.apply(new)
        except ConfigError as exc:
            self.reloads.labels("invalid").inc()
            log.error("config reload refused, the config in force stays: %s", exc)
            return False
        if section_values(new.config, self.command) != section_values(self.loaded.config, self.command):
            log.warning("config %s: the [%s] section changed; that takes effect at the next start", path, self.command)
        self.loaded = new
        self.reloads.labels("ok").inc()
        log.info("config reloaded from %s: %s", path, summary)
        return True
