"""Encoding and strict decoding of bus messages.

A message that is too large, not valid JSON, of the wrong shape, out of range, or of a schema version this
build does not know raises :class:`BadMessage` with a short machine-readable ``reason``; callers count it,
log it and drop it (see ``shared.inbox``). Nothing here does I/O.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

from shared.messages import (
    MESSAGE_TYPES,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    BusMessage,
    contract_error,
    required_version,
)

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
    v: int = 1


_probe_decoder = msgspec.json.Decoder(_VersionProbe)


def encode(message: BusMessage) -> bytes:
    """``message`` as JSON, stamped with the lowest schema version that holds it (``required_version``): a message
    built with the default ``v`` that carries memory goes out as v2."""
    needed = required_version(message)
    if message.v < needed:
        message = msgspec.structs.replace(message, v=needed)
    data = _encoder.encode(message)
    if message.v != 1:
        return data
    # v=1 is its field's default, so msgspec left it out; every message still says its version, right after the
    # tag that msgspec writes first, as builds before v2 wrote it.
    tag_end = _TAG_PREFIX_LENGTH[type(message)]
    return data[:tag_end] + b',"v":1' + data[tag_end:]


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
            if version is not None and version not in READABLE_VERSIONS:
                raise BadMessage("unknown-version", f"v={version}, {_READS}") from exc
            raise BadMessage("malformed", str(exc)) from exc
        if message.v not in READABLE_VERSIONS:
            raise BadMessage("unknown-version", f"v={message.v}, {_READS}")
        broken = contract_error(message)
        if broken is not None:
            raise BadMessage("malformed", broken)
        return message


_READS = f"this build reads v={', '.join(str(v) for v in sorted(READABLE_VERSIONS))} (newest {SCHEMA_VERSION})"


_TAG_PREFIX_LENGTH = {kind: len(f'{{"type":"{kind.__struct_config__.tag}"'.encode()) for kind in MESSAGE_TYPES}


def _probe_version(data: bytes) -> int | None:
    try:
        return _probe_decoder.decode(data).v
    except msgspec.DecodeError:
        return None
