"""Loading memory traces: Bitbrains GWA-T-12 per-VM files with their memory columns.

Each loader returns :class:`MemorySeries`: one VM's provisioned and used memory per step, in bytes. A used value
of 0 is the monitor's gap, not an empty guest (``../shared/traces/README.md``): it is kept as None, so a replay
holds through it and a score leaves it out. Rows of a VM that was not there (0 provisioned) are skipped, as
``shared.traces.load_bitbrains`` skips CPU rows with 0 cores.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shared.traces import TraceError, _files

MEMORY_FORMATS = ("bitbrains-memory",)
KIB = 1024  # the files' "KB" are KiB: 16 GiB VMs read 16703488 KB, 72 MiB short of 16 × 1024²
_PROVISIONED = "Memory capacity provisioned [KB]"
_USED = "Memory usage [KB]"


@dataclass(frozen=True)
class MemorySeries:
    name: str
    provisioned: list[int]  # bytes the VM was given, per step
    used: list[int | None]  # bytes in use per step; None: not measured
    step_s: float


def load_bitbrains_memory(paths: Iterable[Path], step_s: float = 300.0) -> list[MemorySeries]:
    """GWA-T-12 files (``;`` + TAB separated, one header line) naming the provisioned and used memory in KB."""
    series = []
    for path in _files(paths):
        provisioned: list[int] = []
        used: list[int | None] = []
        with path.open(newline="") as handle:
            header = [field.strip() for field in next(handle, "").split(";")]
            if _PROVISIONED not in header or _USED not in header:
                raise TraceError(
                    f"{path}: not a Bitbrains memory file: the header must name {_PROVISIONED!r} and {_USED!r}"
                )
            at_p, at_u = header.index(_PROVISIONED), header.index(_USED)
            for n, line in enumerate(handle, start=2):
                if not line.strip():
                    continue
                fields = line.split(";")
                if len(fields) != len(header):
                    raise TraceError(f"{path}:{n}: {len(fields)} fields, the header names {len(header)}")
                try:
                    cap_kib, used_kib = float(fields[at_p]), float(fields[at_u])
                except ValueError as exc:
                    raise TraceError(f"{path}:{n}: not a number: {exc}") from exc
                if not (cap_kib >= 0 and used_kib >= 0) or cap_kib == float("inf") or used_kib == float("inf"):
                    raise TraceError(f"{path}:{n}: memory must be a finite number ≥ 0, not {cap_kib}, {used_kib}")
                if cap_kib == 0:
                    continue  # the VM was not present
                provisioned.append(round(cap_kib * KIB))
                used.append(round(used_kib * KIB) if used_kib > 0 else None)
        if provisioned:
            series.append(MemorySeries(path.stem, provisioned, used, step_s))
    return series


def load_memory(paths: Iterable[Path], fmt: str, step_s: float | None = None) -> list[MemorySeries]:
    if fmt == "bitbrains-memory":
        return load_bitbrains_memory(paths, step_s or 300.0)
    raise TraceError(f"unknown memory format {fmt!r}; choose from {', '.join(MEMORY_FORMATS)}")
