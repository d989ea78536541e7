"""The guest agent's PSI trigger, the imperative shell: open ``/proc/pressure/cpu``, register a trigger
(``services.collector.urgent.TriggerSpec``), and call back on the event loop each time the kernel fires it.

Why a thread: the kernel signals a trigger with POLLPRI, and reports the file readable (POLLIN) at all times.
asyncio's ``add_reader`` waits for readable, so it would wake the loop on every turn (a busy loop) and never tell a
firing from nothing. One thread blocked in ``select.poll`` on POLLPRI costs nothing while the guest is calm: it wakes
only when the trigger fires (at most once a window, the kernel's limit) or when it is told to stop (a byte on a
pipe it polls too), and hands each firing to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import threading
from collections.abc import Callable
from pathlib import Path

from services.collector.urgent import TriggerSpec

log = logging.getLogger(__name__)

CPU_PRESSURE = Path("/proc/pressure/cpu")
_STOP_WAIT_S = 5.0  # the thread leaves at once when told; this only bounds a close that went wrong


def open_trigger(spec: TriggerSpec, path: Path = CPU_PRESSURE) -> tuple[int, TriggerSpec]:
    """A file descriptor with ``spec`` registered on it, and the trigger it holds: ``spec``, or where the kernel
    refuses it to a process without CAP_SYS_RESOURCE, its unprivileged fall-back (a 2-s multiple window, checked
    only every 2 s: slower, so the fall-back is logged). Raises OSError when PSI triggers are not available."""
    for attempt in (spec, spec.unprivileged()):
        if attempt is None:
            break
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(fd, attempt.payload())
        except OSError as exc:
            os.close(fd)
            if exc.errno != errno.EINVAL or attempt is not spec:
                raise
            continue
        if attempt is not spec:
            log.warning(
                "PSI trigger %r refused (no CAP_SYS_RESOURCE?); set %r instead, which the kernel checks every 2 s",
                spec.text(),
                attempt.text(),
            )
        return fd, attempt
    raise OSError(errno.EINVAL, f"PSI trigger {spec.text()!r} refused by the kernel", str(path))


class PsiWatch:
    """A registered PSI trigger and the thread that waits on it; ``fired`` runs on ``loop`` at each firing. Close it
    to remove the trigger (the kernel drops it with the file) and end the thread."""

    def __init__(
        self,
        spec: TriggerSpec,
        fired: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
        path: Path = CPU_PRESSURE,
    ) -> None:
        self._fd, self.spec = open_trigger(spec, path)
        self._fired = fired
        self._loop = loop
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._wait, name="psi-trigger", daemon=True)
        self._thread.start()

    @property
    def window_s(self) -> float:
        """The window of the trigger the kernel took: it fires at most once in it."""
        return self.spec.window_s

    def _wait(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLPRI)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            events = poller.poll()  # no timeout: asleep until the kernel fires or close() writes
            for fd, mask in events:
                if fd == self._stop_r:
                    return
                if mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    log.warning("PSI trigger gone (poll says %#x): no urgent samples from now on", mask)
                    return
                if mask & select.POLLPRI:
                    try:
                        self._loop.call_soon_threadsafe(self._fired)
                    except RuntimeError:  # the loop is closed: nobody left to tell
                        return

    def close(self) -> None:
        """Stop the thread and remove the trigger. Idempotent."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        self._thread.join(_STOP_WAIT_S)
        for fd in (self._fd, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd = -1
