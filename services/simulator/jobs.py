"""Jobs that arrive at the simulated host: VMs to start, each with its size, workload and how it ends. Pure.

A job is a VM its user asks for: ``requested_vcpus`` (it boots at that size), ``max_vcpus`` (its hot-plug maximum),
a workload profile (``services.simulator.workloads``), an arrival time in seconds from the run's start, and either
a ``lifetime_s`` (inference services, notebooks: it stops then) or an amount of ``work_s`` (training, batch:
seconds of work at full demand; starved, it takes longer). A job with neither runs to the end of the run.

Arrivals come from a seeded Poisson process (:func:`poisson_arrivals`: the same seed gives the same jobs) or from
a CSV file (:func:`load_arrivals`: ``arrival_s,name,requested_vcpus,max_vcpus,profile,lifetime_s,work_s``, one of
the last two empty; a bad file raises :class:`ArrivalsError` with one line naming the file, the line and why).

The generated mix looks like the users of a shared HPC/AI machine (:data:`SIZES`, :data:`KINDS`): mostly small
VMs, some large; half of them long work (training 10-60 min, batch 10-40 min), half interactive services
(notebooks and inference endpoints that live 20-120 min).
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.simulator.vm_memory import MEMORY_PER_VCPU_BYTES
from services.simulator.workloads import PROFILES
from shared.errors import InputError

# Requested vCPUs and their weight in the generated mix. A job's VM boots at what its user asked for and may not
# grow past it (its hot-plug maximum): what the pool gains is what users asked for and do not use.
SIZES: tuple[tuple[int, float], ...] = ((2, 0.5), (4, 0.35), (8, 0.15))
# (profile, weight, "work" or "lifetime", low, high seconds): the generated mix of jobs.
KINDS: tuple[tuple[str, float, str, float, float], ...] = (
    ("training", 0.3, "work", 600.0, 3600.0),
    ("batch", 0.2, "work", 600.0, 2400.0),
    ("notebook", 0.3, "lifetime", 1200.0, 7200.0),
    ("inference", 0.2, "lifetime", 1200.0, 7200.0),
)
# The share of its request a generated job's workload peaks at, drawn uniformly: users ask for more than they use
# (neon's motivating cluster: 121 CPUs requested, 6 used; PlanetLab's day in ../shared/traces: a mean of 12 % of a
# CPU). With the profiles' own ups and downs a job then uses about a fifth of what it asked for on average.
PEAK_SHARE = (0.25, 1.0)
MAX_JOB_VCPUS = 1024
COLUMNS = ("arrival_s", "name", "requested_vcpus", "max_vcpus", "profile", "lifetime_s", "work_s")
# What a VM name must be to travel in a MetricSample (shared.messages VmName).
_VM_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")


class ArrivalsError(InputError):
    """An arrivals file that is missing or wrong; the text names the file, the line and the reason."""


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    requested_vcpus: int
    max_vcpus: int
    profile: str
    arrival_s: float  # seconds from the run's start
    lifetime_s: float | None = None
    work_s: float | None = None
    seed: int = 0  # its workload's seed
    # The most its workload ever asks, in cores (None: its maximum). Users ask for more than they use.
    peak_cores: float | None = None
    # The memory it asks for and boots with (None: MEMORY_PER_VCPU_BYTES per requested vCPU); it may give it back
    # down to its boot RAM and grow again up to it.
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.requested_vcpus <= self.max_vcpus:
            raise ValueError(f"{self.name}: need 1 <= requested_vcpus <= max_vcpus")
        if self.lifetime_s is not None and self.work_s is not None:
            raise ValueError(f"{self.name}: a job has a lifetime or an amount of work, not both")
        if self.profile not in PROFILES:
            raise ValueError(f"{self.name}: unknown workload profile {self.profile!r}")
        if self.peak_cores is not None and not 0 < self.peak_cores <= self.max_vcpus:
            raise ValueError(f"{self.name}: need 0 < peak_cores <= max_vcpus")
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise ValueError(f"{self.name}: need memory_bytes > 0")

    @property
    def requested_memory_bytes(self) -> int:
        return MEMORY_PER_VCPU_BYTES * self.requested_vcpus if self.memory_bytes is None else self.memory_bytes

    @property
    def size(self) -> float:
        """The cores its workload's levels are shares of: its peak."""
        return self.max_vcpus if self.peak_cores is None else self.peak_cores


def job_seed(seed: int, index: int) -> int:
    """The workload seed of the ``index``-th job of an arrivals seed (apart from the resident VMs' seeds)."""
    return seed * 7919 + 1_000_003 + index


def _weighted(rng: random.Random, weights: list[float]) -> int:
    return rng.choices(range(len(weights)), weights=weights)[0]


def poisson_arrivals(rate_per_hour: float, seed: int) -> Iterator[Job]:
    """An endless stream of jobs (``job-0001``, ...) arriving as a Poisson process of ``rate_per_hour``, drawn
    from the mix above. Same rate and seed: same jobs. A rate of 0 gives none."""
    if rate_per_hour < 0:
        raise ValueError(f"the arrival rate must not be negative, got {rate_per_hour}")
    if rate_per_hour == 0:
        return
    rng = random.Random(seed)
    t = 0.0
    index = 0
    while True:
        t += rng.expovariate(rate_per_hour / 3600.0)
        requested = SIZES[_weighted(rng, [w for _, w in SIZES])][0]
        profile, _, ends, low, high = KINDS[_weighted(rng, [k[1] for k in KINDS])]
        length = round(rng.uniform(low, high), 1)
        peak = round(requested * rng.uniform(*PEAK_SHARE), 2)
        index += 1
        yield Job(
            name=f"job-{index:04d}",
            requested_vcpus=requested,
            max_vcpus=requested,
            profile=profile,
            arrival_s=round(t, 3),
            lifetime_s=length if ends == "lifetime" else None,
            work_s=length if ends == "work" else None,
            seed=job_seed(seed, index),
            peak_cores=peak,
        )


def arrivals_until(jobs: Iterator[Job], span_s: float) -> list[Job]:
    """The jobs of ``jobs`` (in arrival order) that arrive before ``span_s``."""
    out = []
    for job in jobs:
        if job.arrival_s >= span_s:
            break
        out.append(job)
    return out


def load_arrivals(path: Path, seed: int = 1) -> list[Job]:
    """The jobs of an arrivals CSV, in arrival order (ties in file order); their workloads seeded from ``seed``."""
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise ArrivalsError(f"{path}: cannot read the arrivals file: {exc.strerror or exc}") from exc
    jobs: list[Job] = []
    names: set[str] = set()
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != COLUMNS:
            raise ArrivalsError(f"{path}:1: the header must be {','.join(COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            job = _job_of(path, line, row, job_seed(seed, len(jobs) + 1))
            if job.name in names:
                raise ArrivalsError(f"{path}:{line}: job name {job.name!r} is used twice")
            names.add(job.name)
            jobs.append(job)
    if not jobs:
        raise ArrivalsError(f"{path}: no jobs (expected the header {','.join(COLUMNS)} and one row per job)")
    return sorted(jobs, key=lambda j: j.arrival_s)


def _job_of(path: Path, line: int, row: list[str], seed: int) -> Job:
    def fail(reason: str) -> ArrivalsError:
        return ArrivalsError(f"{path}:{line}: {reason}")

    if len(row) != len(COLUMNS):
        raise fail(f"expected {len(COLUMNS)} columns ({','.join(COLUMNS)}), got {len(row)}")
    arrival, name, requested, maximum, profile, lifetime, work = (cell.strip() for cell in row)

    def number(column: str, text: str, positive: bool) -> float:
        try:
            value = float(text)
        except ValueError:
            raise fail(f"{column} {text!r} is not a number") from None
        if not value < float("inf") or value < 0 or (positive and value == 0):
            raise fail(f"{column} must be {'positive' if positive else 'at least 0'}, got {text}")
        return value

    def vcpus(column: str, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise fail(f"{column} {text!r} is not a whole number") from None
        if not 1 <= value <= MAX_JOB_VCPUS:
            raise fail(f"{column} must be 1 to {MAX_JOB_VCPUS}, got {value}")
        return value

    if not _VM_NAME.match(name):
        raise fail(f"name {name!r} is empty, too long or has control characters")
    low, high = vcpus("requested_vcpus", requested), vcpus("max_vcpus", maximum)
    if low > high:
        raise fail(f"requested_vcpus {low} is above max_vcpus {high}")
    if profile not in PROFILES:
        raise fail(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    if bool(lifetime) == bool(work):
        raise fail("give exactly one of lifetime_s and work_s")
    return Job(
        name=name,
        requested_vcpus=low,
        max_vcpus=high,
        profile=profile,
        arrival_s=number("arrival_s", arrival, positive=False),
        lifetime_s=number("lifetime_s", lifetime, positive=True) if lifetime else None,
        work_s=number("work_s", work, positive=True) if work else None,
        seed=seed,
    )
