"""Encoding and strict decoding of bus messages.

A message that is too large, not valid JSON, of the wrong shape, out of range, or of a schema version this
build does not know raises :class:`BadMessage` with a short machine-readable ``reason``; callers count it,
log it and drop it (see ``shared.inbox``). Nothing here does I/O.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

from shared.messages import SCHEMA_VERSION, BusMessage

MAX_MESSAGE_BYTES = 64 * 1024

T = TypeVar("T", bound=BusMessage)

_encoder = msgspec.json.Encoder()


class BadMessage(Exception):
    """A message that must be dropped. ``reason`` is one of: oversized, malformed, unknown-version."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _VersionProbe(msgspec.Struct):
    v: int = SCHEMA_VERSION


_probe_decoder = msgspec.json.Decoder(_VersionProbe)


def encode(message: BusMessage) -> bytes:
    return _encoder.encode(message)


class Decoder(Generic[T]):
    """Strict decoder for one message type; reuse one instance per type (it caches msgspec's decoder)."""

    def __init__(self, message_type: type[T], max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.message_type = message_type
        self.max_bytes = max_bytes
        self._decoder = msgspec.json.Decoder(message_type)

    def decode(self, data: bytes) -> T:
        if len(data) > self.max_bytes:
            raise BadMessage("oversized", f"{len(data)} bytes > {self.max_bytes}")
        try:
            message = self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            version = _probe_version(data)
            if version is not None and version != SCHEMA_VERSION:
                raise BadMessage("unknown-version", f"v={version}, this build reads v={SCHEMA_VERSION}") from exc
            raise BadMessage("malformed", str(exc)) from exc
        if message.v != SCHEMA_VERSION:
            raise BadMessage("unknown-version", f"v={message.v}, this build reads v={SCHEMA_VERSION}")
        return message


def _probe_version(data: bytes) -> int | None:
    try:
        return _probe_decoder.decode(data).v
    except msgspec.DecodeError:
        return None
