"""A minimal writer of the cpio "newc" format, enough for a Linux initramfs. Pure (bytes in, bytes out).

The host has no cpio binary; the kernel reads newc archives (``Documentation/driver-api/early-userspace``).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    path: str  # relative, no leading slash
    mode: int  # full st_mode (type and permissions)
    data: bytes = b""  # file contents, or the target of a symlink


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def _record(ino: int, entry: Entry) -> bytes:
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, 0, 0, len(name), 0)
    header = b"070701" + b"".join(f"{f:08X}".encode() for f in fields)
    out = header + name
    out += _pad(len(out))
    out += entry.data + _pad(len(entry.data))
    return out


def archive(entries: list[Entry]) -> bytes:
    """The newc archive of ``entries`` (in order), with its trailer."""
    parts = [_record(i + 1, e) for i, e in enumerate(entries)]
    parts.append(_record(0, Entry(TRAILER, 0)))
    return b"".join(parts)


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def file(path: str, data: bytes, executable: bool = False) -> Entry:
    return Entry(path, stat.S_IFREG | (0o755 if executable else 0o644), data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())
