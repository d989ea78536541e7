"""What an actuator is in the middle of: one marker per VM in the KV bucket ``hotplug_actuator_progress``,
written before the first hot-plug step of a command and removed once its result is stored.

An actuator killed mid-action leaves its marker behind, and the hypervisor may finish the step it was asked
for. The next actuator of the host starts by settling every marker it finds: it reads the VM and stores the
command's result as things are (done, or interrupted part-way, with the counts before and now), before it takes
any new command. So the interrupted command's change is reported, and no newer command for that VM can run
first and blur what happened; when JetStream redelivers it later, it is a duplicate.
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from shared import bus, topology
from shared.messages import ScaleCommand

PROGRESS_BUCKET = topology.ACTUATOR_PROGRESS_BUCKET


class InProgress(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    command: ScaleCommand
    before: int


_decode = msgspec.json.Decoder(InProgress).decode


class ProgressLog:
    def __init__(self, js: JetStreamContext, kv: KeyValue, host: str) -> None:
        self.js = js
        self.kv = kv
        self.host = host

    @classmethod
    async def open(cls, js: JetStreamContext, host: str) -> ProgressLog:
        return cls(js, await bus.key_value(js, PROGRESS_BUCKET), host)

    async def begin(self, command: ScaleCommand, before: int) -> None:
        """Mark ``command`` under way; stored (retried like any event) before the hypervisor is touched."""
        await bus.publish_durable(
            self.js,
            topology.kv_subject(PROGRESS_BUCKET, topology.progress_key(self.host, command.vm)),
            msgspec.json.encode(InProgress(command, before)),
            msg_id=f"progress-{command.id}",
        )

    async def end(self, command: ScaleCommand) -> None:
        await self.kv.delete(topology.progress_key(self.host, command.vm))

    async def left_over(self) -> list[InProgress]:
        """The markers a dead actuator of this host left, each read by its key (``bus.current_entries``: a watch's
        "all in" can come before a marker stored long ago has been handed over, and a marker missed here is a
        change no result reports)."""
        markers = await bus.current_entries(self.js, self.kv, PROGRESS_BUCKET, topology.progress_keys(self.host))
        return [_decode(value) for value in markers.values()]
