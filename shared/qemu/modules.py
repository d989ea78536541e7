"""Kernel modules for the test guest: each ``.ko``'s ``.modinfo`` section read from its ELF file, and a load order
in which every module comes after what it ``depends=`` on. Pure (bytes in, values out).

The host has no ``modinfo`` and the kernel package no ``modules.dep``, so the order is read from the modules
themselves: in 6.1.0-57 ``virtio`` needs ``virtio_ring``, so a fixed order of names can go stale.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1


class ModuleError(ValueError):
    pass


def modinfo(elf: bytes) -> dict[str, str]:
    """The ``key=value`` pairs of a little-endian ELF64 module's ``.modinfo`` section (the first of each key)."""
    if elf[:4] != ELF_MAGIC or elf[4] != ELFCLASS64 or elf[5] != ELFDATA2LSB:
        raise ModuleError("not a little-endian 64-bit ELF file")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        """(name offset, file offset, size) of section ``index``."""
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + index * shentsize)
        return name, offset, size

    _, names_at, names_size = section(shstrndx)
    names = elf[names_at : names_at + names_size]
    for index in range(shnum):
        name_at, offset, size = section(index)
        if names[name_at : names.index(b"\0", name_at)] == b".modinfo":
            pairs = (item.split(b"=", 1) for item in elf[offset : offset + size].split(b"\0") if b"=" in item)
            out: dict[str, str] = {}
            for key, value in pairs:
                out.setdefault(key.decode(), value.decode(errors="replace"))
            return out
    raise ModuleError("no .modinfo section: not a kernel module")


def depends(info: Mapping[str, str]) -> list[str]:
    return [name for name in info.get("depends", "").split(",") if name]


def load_order(wanted: list[str], deps: Mapping[str, list[str]]) -> list[str]:
    """``wanted`` with their dependencies, each after what it depends on (otherwise in ``wanted``'s order).
    ``ModuleError`` names a dependency that is not in ``deps`` or a cycle."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, needed_by: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ModuleError(f"modules depend on each other in a cycle through {name}")
        if name not in deps:
            raise ModuleError(f"{needed_by} needs module {name}, which is not in the package")
        visiting.add(name)
        for dep in deps[name]:
            visit(dep, name)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name, "the guest")
    return order
