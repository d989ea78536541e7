"""Memory sizes written by people: ``512MiB``, ``8GiB``, ``1.5G``, ``4096`` (MiB when no unit is given).

One parser for the config file, the command line and anything else that takes a size from a person; messages
carry plain bytes. Binary units (KiB, MiB, GiB, TiB) and their one-letter forms (K, M, G, T) are powers of 1024;
decimal units (kB, MB, GB, TB) are powers of 1000, as ``numfmt`` and libvirt read them. A bare number is MiB,
the unit QEMU's ``-m`` and VirtualBox's ``--memory`` take. Anything else (zero, negative, not a number, an unknown
unit, a size past ``MAX_MEMORY_BYTES``) raises :class:`SizeError` naming what was wrong.
"""

from __future__ import annotations

import math
import re

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB
# 64 TiB: more than any single VM this project will meet; a bigger figure is a typo (a unit missed or doubled).
MAX_MEMORY_BYTES = 64 * TIB

_UNITS: dict[str, int] = {
    "": MIB,
    "b": 1,
    "k": KIB,
    "kib": KIB,
    "m": MIB,
    "mib": MIB,
    "g": GIB,
    "gib": GIB,
    "t": TIB,
    "tib": TIB,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


class SizeError(ValueError):
    """A size that cannot be read; the message says why and shows the forms that can."""


def parse_size(text: str | int | float, *, allow_zero: bool = False) -> int:
    """``text`` as a whole number of bytes (rounded down). Numbers without a unit are MiB."""
    if isinstance(text, bool):
        raise SizeError(f"{text!r} is not a memory size (write e.g. 512MiB or 8GiB)")
    if isinstance(text, int | float):
        text = repr(text)
    match = _SIZE.match(text)
    if match is None:
        raise SizeError(f"{text!r} is not a memory size (write e.g. 512MiB, 8GiB or 4096 for MiB)")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None or (unit.lower() == "b" and unit != "B"):
        raise SizeError(f"{text!r}: unknown unit {unit!r} (use B, KiB, MiB, GiB, TiB, or kB, MB, GB, TB)")
    value = float(number) * factor
    if not math.isfinite(value) or value > MAX_MEMORY_BYTES:
        raise SizeError(f"{text!r} is more than {format_size(MAX_MEMORY_BYTES)}: a unit missed or doubled?")
    size = int(value)
    if size <= 0 and not allow_zero:
        raise SizeError(f"{text!r} is no memory: a size must be more than 0")
    return size


def format_size(size: int) -> str:
    """``size`` bytes in the largest binary unit that keeps it readable: ``1.5GiB``, ``512MiB``, ``300B``."""
    if size < 0:
        return "-" + format_size(-size)
    for unit, factor in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= factor:
            value = size / factor
            return f"{value:.2f}".rstrip("0").rstrip(".") + unit
    return f"{size}B"


def align_down(size: int, step: int) -> int:
    """``size`` rounded down to a multiple of ``step`` (a device's block)."""
    return size - size % step if step > 0 else size


def align_up(size: int, step: int) -> int:
    """``size`` rounded up to a multiple of ``step``."""
    return -(-size // step) * step if step > 0 else size
