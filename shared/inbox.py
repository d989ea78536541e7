"""The one way a service takes a message off the bus: decode strictly, or count, log and drop it.

A message is also dropped when its body disagrees with its subject (host or VM): authority comes from
who may publish on a subject, so the body may not claim another VM than the subject it came on. A per-host
message (HostState, on ``hotplug.hosts.<host>``) may not claim another host.
"""

from __future__ import annotations

import logging
from typing import Any, Generic, TypeVar

from shared import subjects
from shared.codec import BadMessage, Decoder
from shared.messages import BusMessage
from shared.telemetry import ServiceMetrics

T = TypeVar("T", bound=BusMessage)

log = logging.getLogger(__name__)

DROP_REASONS = ("oversized", "malformed", "unknown-version", "subject-mismatch")
# Subjects whose origin is kept parsed: a fleet's VMs, each on its own subject; emptied when full.
ORIGINS_SIZE = 65536
_UNPARSED: Any = object()


class Inbox(Generic[T]):
    def __init__(self, kind: str, message_type: type[T], metrics: ServiceMetrics) -> None:
        self.kind = kind
        self.decoder: Decoder[T] = Decoder(message_type)
        self.metrics = metrics
        # Series exist from the start (at 0), so dashboards never query a missing one.
        self._received = metrics.received.labels(metrics.service, kind)
        self._origins: dict[str, tuple[str, str | None] | None] = {}
        for reason in DROP_REASONS:
            metrics.dropped.labels(metrics.service, kind, reason)

    def open(self, subject: str, data: bytes) -> T | None:
        """The decoded message, or None after counting and logging why it was dropped."""
        message = self._checked(subject, data)
        if message is not None:
            self._received.inc()
        return message

    def judge(self, subject: str, data: bytes) -> bool:
        """Whether ``data`` is a well-formed message for ``subject``, without taking it in: one that is not is
        counted and logged as ``open`` drops it; one that is counts as nothing here (the caller sheds it)."""
        return self._checked(subject, data) is not None

    def _checked(self, subject: str, data: bytes) -> T | None:
        """The decoded message if it is well formed and agrees with its subject; else None, its drop counted."""
        try:
            message = self.decoder.decode(data)
        except BadMessage as exc:
            self._drop(subject, exc.reason, exc.detail)
            return None
        return message if self._agrees(subject, message) else None

    def _agrees(self, subject: str, message: T) -> bool:
        body_vm: str | None = getattr(message, "vm", None)  # a per-host message names no VM
        # A VM's samples keep coming on its one subject: its origin is parsed once, not per message.
        origins = self._origins
        said = origins.get(subject, _UNPARSED)
        if said is _UNPARSED:
            if len(origins) >= ORIGINS_SIZE:
                origins.clear()
            said = origins[subject] = subjects.origin(subject)
        # not a per-VM or per-host subject (e.g. a test's direct publish): nothing to compare
        host, vm = said if said is not None else (message.host, body_vm)
        if host != message.host or (vm is not None and vm != body_vm):
            self._drop(subject, "subject-mismatch", f"body names {message.host}/{body_vm!r}")
            return False
        return True

    def _drop(self, subject: str, reason: str, detail: str) -> None:
        self.metrics.dropped.labels(self.metrics.service, self.kind, reason).inc()
        log.warning("dropped %s on %s: %s: %s", self.kind, subject, reason, detail[:300])
        return None
