"""Loading CPU-demand traces: the project's CSV, Bitbrains GWA-T-12, and PlanetLab (CoMon).

Every loader returns :class:`VmSeries`: one VM's demand in vCPUs per step, with its size. This module does
the file reading; ``evaluation.replay`` does the arithmetic. It is shared because the simulator plays the same
CSV files live (``hotplug up --trace``), and a service may import ``shared`` but not the study code.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InputError

FORMATS = ("csv", "bitbrains", "planetlab")


@dataclass(frozen=True)
class VmSeries:
    name: str
    demand: list[float]  # vCPUs wanted in each step
    max_vcpus: int
    step_s: float
    min_vcpus: int = 1
    # The time of each value (seconds, the file's own), where the format records it (csv): a step may vary, and
    # the simulator holds each value until the next. None: value i is at i × step_s.
    times: list[float] | None = None


class TraceError(InputError):
    """A trace file that is missing or not in the format named."""


def _files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.suffix not in (".md", ".tsv")
                )
            )
        elif path.is_file():
            out.append(path)
        else:
            raise TraceError(f"no such file or directory: {path}")
    return out


def load_planetlab(paths: Iterable[Path], vm_size: int, step_s: float = 300.0) -> list[VmSeries]:
    """One CPU percent per line; demand = percent / 100 × ``vm_size``."""
    series = []
    for path in _files(paths):
        try:
            values = [float(line) for line in path.read_text().split()]
        except ValueError as exc:
            raise TraceError(f"{path}: not a PlanetLab file (one number per line): {exc}") from exc
        if values:
            series.append(VmSeries(path.name, [max(0.0, v) / 100 * vm_size for v in values], vm_size, step_s))
    return series


def load_bitbrains(paths: Iterable[Path], step_s: float = 300.0) -> list[VmSeries]:
    """GWA-T-12 per-VM files; demand = usage MHz / (capacity MHz / cores); rows with 0 cores are skipped."""
    series = []
    for path in _files(paths):
        demand: list[float] = []
        cores_max = 0
        with path.open(newline="") as handle:
            lines = iter(handle)
            header = next(lines, "")
            if "CPU cores" not in header:
                raise TraceError(f"{path}: not a Bitbrains file (header {header.strip()[:60]!r})")
            for n, line in enumerate(lines, start=2):
                fields = line.split(";")
                if len(fields) < 4:
                    continue
                try:
                    cores = int(float(fields[1]))
                    capacity = float(fields[2])
                    usage = float(fields[3])
                except ValueError as exc:
                    raise TraceError(f"{path}:{n}: {exc}") from exc
                if cores <= 0 or capacity <= 0:
                    continue  # the VM was not present
                demand.append(max(0.0, usage) / (capacity / cores))
                cores_max = max(cores_max, cores)
        if demand:
            series.append(VmSeries(path.stem, demand, cores_max, step_s))
    return series


def load_csv(paths: Iterable[Path], step_s: float | None = None) -> list[VmSeries]:
    """``time_s,vm,demand_vcpus[,max_vcpus]`` with a header; rows sorted by time within each VM."""
    rows: dict[str, list[tuple[float, float]]] = {}
    sizes: dict[str, int] = {}
    for path in _files(paths):
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            needed = {"time_s", "vm", "demand_vcpus"}
            if reader.fieldnames is None or not needed <= set(reader.fieldnames):
                raise TraceError(f"{path}: header must name {', '.join(sorted(needed))}")
            for n, row in enumerate(reader, start=2):
                try:
                    rows.setdefault(row["vm"], []).append((float(row["time_s"]), float(row["demand_vcpus"])))
                    if row.get("max_vcpus"):
                        sizes[row["vm"]] = max(sizes.get(row["vm"], 0), int(row["max_vcpus"]))
                except ValueError as exc:
                    raise TraceError(f"{path}:{n}: {exc}") from exc
    series = []
    for vm, points in rows.items():
        points.sort()
        times = [t for t, _ in points]
        diffs = sorted(b - a for a, b in itertools.pairwise(times) if b > a)
        step = step_s or (diffs[len(diffs) // 2] if diffs else 300.0)
        demand = [max(0.0, d) for _, d in points]
        size = sizes.get(vm) or max(1, math.ceil(max(demand)))
        series.append(VmSeries(vm, demand, size, step, times=times))
    return series


def load(paths: Iterable[Path], fmt: str, vm_size: int | None = None, step_s: float | None = None) -> list[VmSeries]:
    paths = list(paths)
    if fmt == "planetlab":
        if not vm_size:
            raise TraceError("the planetlab format needs --vm-size (the vCPUs a VM was given)")
        return load_planetlab(paths, vm_size, step_s or 300.0)
    if fmt == "bitbrains":
        return load_bitbrains(paths, step_s or 300.0)
    if fmt == "csv":
        return load_csv(paths, step_s)
    raise TraceError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
