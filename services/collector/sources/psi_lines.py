"""The project's test guest says ``PSI cpu stall_us=.. window_ms=.. running=..`` on its control channel the moment a
runnable task waited 30 ms in 100 ms (shared/qemu/init.sh), at most every 500 ms. Its host-side sources (``qemu``,
and ``libvirt`` for the same image under libvirt) follow each running guest's control log, looking every
``PRESSURE_POLL_S`` (a size check; only new bytes are read, on the loop: a stat and a read of a line cost less than a
hop to a worker thread), and ask the collector for an urgent round when a PSI line has come.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from shared.qemu.vm import LineSplitter, file_size, parse_psi

log = logging.getLogger(__name__)

# How often the guests' control logs are looked at for a PSI line: a twentieth of a second added to the detection
# (the guest looks every 100 ms), for a stat per guest each time.
PRESSURE_POLL_S = 0.05
PSI_WINDOW_S = 0.5  # the test guest says at most one PSI line in 500 ms


class LogFollower:
    """The lines a file gains, from where it ended when the follower was made: ``new_lines`` reads only what was
    added since the last call (a size check first). A file that shrank was started again (a guest rebooted: QEMU
    truncates its log), and is read from its start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = file_size(path)
        self._lines = LineSplitter(mid_line=self._ends_mid_line())

    def _ends_mid_line(self) -> bool:
        """Whether the log now ends inside a line, whose rest the first new bytes would be."""
        if self.offset == 0:
            return False
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset - 1)
                return f.read(1) != b"\n"
        except OSError:
            return False

    def new_lines(self) -> list[str]:
        size = file_size(self.path)
        if size < self.offset:
            self.offset = 0
            self._lines = LineSplitter()
        if size == self.offset:
            return []
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read(size - self.offset)
        except OSError:
            return []
        self.offset += len(data)
        return self._lines.feed(data)


class PsiLogWatch:
    """Follows the control logs of the guests a source last found running (``logs``: guest name → its control log),
    and calls ``fired`` when one said a PSI line. Closed by ``close`` (or with its loop)."""

    window_s = PSI_WINDOW_S

    def __init__(self, logs: Callable[[], Mapping[str, Path]], fired: Callable[[], None]) -> None:
        self._logs = logs
        self._fired = fired
        self._followers: dict[str, LogFollower] = {}
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="guest-psi-lines")

    def look(self) -> bool:
        """One look at every guest's log; True if any said a PSI line since the last look."""
        # a guest seen for the first time is followed from its log's end; a stopped one is forgotten
        self._followers = {name: self._followers.get(name) or LogFollower(path) for name, path in self._logs().items()}
        said = False
        for follower in self._followers.values():
            if any(parse_psi(line.strip()) is not None for line in follower.new_lines()):
                said = True
        return said

    async def _follow(self) -> None:
        while True:
            try:
                if self.look():
                    self._fired()
            except Exception:  # a log that cannot be read this look is looked at again the next
                log.exception("looking for the guests' PSI lines failed")
            await asyncio.sleep(PRESSURE_POLL_S)  # wall time: the guests write in it

    def close(self) -> None:
        self._task.cancel()
