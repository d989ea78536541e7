"""A read-only view of the bus: every metric sample, command and result, decoded, for the live table of
``hotplug up`` and the audit of ``hotplug chaos``. Messages that do not decode are skipped: the services count
and log them."""

from __future__ import annotations

import contextlib

from nats.aio.client import Client
from nats.aio.msg import Msg

from shared import subjects
from shared.codec import BadMessage, Decoder
from shared.messages import MetricSample, ScaleCommand, ScaleResult


class BusWatcher:
    """Subclasses say what to do with each decoded message."""

    def __init__(self) -> None:
        self._sample = Decoder(MetricSample)
        self._command = Decoder(ScaleCommand)
        self._result = Decoder(ScaleResult)

    async def attach(self, nc: Client) -> None:
        await nc.subscribe(subjects.ALL_METRICS, cb=self._on_sample)
        await nc.subscribe(subjects.ALL_COMMANDS, cb=self._on_command)
        await nc.subscribe(subjects.ALL_RESULTS, cb=self._on_result)
        await nc.flush()

    def on_sample(self, sample: MetricSample) -> None:
        pass

    def on_command(self, command: ScaleCommand) -> None:
        pass

    def on_result(self, result: ScaleResult) -> None:
        pass

    async def _on_sample(self, msg: Msg) -> None:
        with contextlib.suppress(BadMessage):
            self.on_sample(self._sample.decode(msg.data))

    async def _on_command(self, msg: Msg) -> None:
        with contextlib.suppress(BadMessage):
            self.on_command(self._command.decode(msg.data))

    async def _on_result(self, msg: Msg) -> None:
        with contextlib.suppress(BadMessage):
            self.on_result(self._result.decode(msg.data))
