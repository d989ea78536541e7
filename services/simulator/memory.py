"""Memory demand that looks like the work our users run: pure, seeded and reproducible, as the CPU demand is.

A VM's memory demand follows the phases of its CPU workload (``services.simulator.workloads``: the same phases, so
a training's memory grows through the epoch its CPU is busy with), and each phase's own figures come from a hash of
the workload's seed and the phase's number, never from the CPU's random stream: the CPU demand is the same with or
without memory, and the same seed gives the same memory at the same simulated time, however often it is asked.

Two figures, each a share of the VM's requested memory (as CPU levels are shares of its requested vCPUs):

* **anonymous** memory: what its processes hold (model weights, the dataset in memory, activations, a dataframe).
  It cannot be dropped; above the guest's RAM it swaps, above RAM plus swap the guest kills it
  (``services.simulator.vm_memory``).
* **page cache**: files read or written (dataset shards, checkpoints, a CSV a notebook loads), kept while there is
  room and given up under pressure, so it counts as available.

The profiles (``u`` = a seeded draw in [0, 1) per VM or per phase; every peak stays below 0.8 of the request, so a
VM at its requested size never swaps and a run that moves no memory is the run it was before memory was modelled):

* **training**: model and dataset come in during the first data-loading (0.30 + 0.15u); each epoch grows by
  0.15 + 0.10u (activations, optimizer state); evaluation is 0.05 below the epoch's peak; then back to the base.
  Cache: the dataset read in the first data-loading (0.10 + 0.15u), each checkpoint written on top (up to 0.08).
* **inference**: the model (0.25 + 0.15u) + 0.03 serving, + a KV cache per burst (0.10 + 0.15u, up in 2 s). Cache:
  the model files, read in the first 30 s (0.15 + 0.10u).
* **notebook**: the idle interpreter (0.08 + 0.07u); a cell loads a dataframe (0.15 + 0.35u, up in 3 s), a quarter
  of which stays after the cell. Cache: the file the last cell read (half its dataframe).
* **batch**: rises over a run's first 30 s to a plateau (0.35 + 0.35u), holds, ends (0.05 between runs). Cache: its
  input, read through the run (0.10 + 0.20u).
* **idle**: 0.05, cache 0.02; **trace** (a recording of CPU only) or any other: a steady 0.30, cache 0.10.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from services.simulator.workloads import Demand, PhaseAt, Workload

# Seconds over which the rises above are spread: a dataframe read, a KV cache filled, a batch's input set up.
BURST_RISE_S = 2.0
CELL_RISE_S = 3.0
BATCH_RISE_S = 30.0
MODEL_READ_S = 30.0
# No profile's anonymous memory passes this share of the request (tests hold every profile to it): a VM with room
# for it can neither swap nor be OOM-killed, and the simulator skips its memory until it is asked about it.
ANON_PEAK_SHARE = 0.80
# What a killed job's VM holds while its job starts again (kernel, init, the runtime): a share of the request.
RESTART_SHARE = 0.05


class MemoryLevel(NamedTuple):
    """A VM's memory demand, as shares of its requested memory."""

    anon: float
    cache: float


class Piece(NamedTuple):
    """A phase's memory: each figure rises (or falls) linearly from its phase's start, over its ``*_s`` seconds,
    then holds. Shares of the requested memory."""

    anon_from: float
    anon_to: float
    anon_s: float
    cache_from: float
    cache_to: float
    cache_s: float

    def at(self, start: float, t: float) -> MemoryLevel:
        return MemoryLevel(
            _between(self.anon_from, self.anon_to, (t - start) / self.anon_s if self.anon_s > 0 else 1.0),
            _between(self.cache_from, self.cache_to, (t - start) / self.cache_s if self.cache_s > 0 else 1.0),
        )


def _between(a: float, b: float, x: float) -> float:
    return a if x <= 0.0 else b if x >= 1.0 else a + (b - a) * x


def _flat(anon: float, cache: float) -> Piece:
    return Piece(anon, anon, 0.0, cache, cache, 0.0)


def _u(seed: int, index: int, salt: int) -> float:
    """A seeded draw in [0, 1) for phase ``index`` (-1: the VM's own figures), ``salt`` telling draws apart."""
    x = (seed * 1_000_033 + (index + 1) * 97 + salt + 0x6D656D) & 0xFFFFFFFFFFFFFFFF
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) / 2**64


def training(seed: int, phase: PhaseAt) -> Piece:
    base = 0.30 + 0.15 * _u(seed, -1, 1)
    dataset = 0.10 + 0.15 * _u(seed, -1, 2)
    span = phase.end - phase.start
    if phase.number == 0:  # the first data-loading: model and dataset come in
        return Piece(RESTART_SHARE, base, span, 0.0, dataset, span)

    def growth(number: int) -> float:
        return (0.15 + 0.10 * _u(seed, -1, 3)) * (0.9 + 0.2 * _u(seed, number, 4))

    if phase.label == "epoch":
        return Piece(base, base + growth(phase.number), span, dataset, dataset, 0.0)
    if phase.label == "evaluation":  # the epoch before it set the peak; evaluation frees the optimizer's part
        return _flat(base + growth(phase.number - 1) - 0.05, dataset)
    if phase.label == "checkpoint":
        return Piece(base + 0.02, base + 0.02, 0.0, dataset, dataset + 0.08, span)
    return _flat(base, dataset)  # data-loading of a later epoch: the dataset is in memory already


def inference(seed: int, phase: PhaseAt) -> Piece:
    model = 0.25 + 0.15 * _u(seed, -1, 1) + 0.03
    files = 0.15 + 0.10 * _u(seed, -1, 2)
    if phase.label == "burst":
        kv = 0.10 + 0.15 * _u(seed, phase.number, 3)
        return Piece(model, model + kv, BURST_RISE_S, files, files, 0.0)
    if phase.number == 0:  # the model files are read as the service starts
        return Piece(model, model, 0.0, 0.0, files, MODEL_READ_S)
    return _flat(model, files)


def notebook(seed: int, phase: PhaseAt) -> Piece:
    interpreter = 0.08 + 0.07 * _u(seed, -1, 1)

    def frame(number: int) -> float:
        return 0.15 + 0.35 * _u(seed, number, 2)

    if phase.label == "cell":  # the file it reads replaces the last cell's in the cache
        kept = 0.25 * frame(phase.number - 2) if phase.number >= 2 else 0.0
        new = frame(phase.number)
        return Piece(interpreter + kept, interpreter + kept + new, CELL_RISE_S, 2 * kept, 0.5 * new, CELL_RISE_S)
    if phase.number >= 1:  # after a cell: a quarter of its dataframe stays, and its file in the cache
        last = frame(phase.number - 1)
        return _flat(interpreter + 0.25 * last, 0.5 * last)
    return _flat(interpreter, 0.0)


def batch(seed: int, phase: PhaseAt) -> Piece:
    def cache(number: int) -> float:
        return 0.10 + 0.20 * _u(seed, number, 2) if number >= 0 else 0.0

    if phase.label == "run":
        plateau = 0.35 + 0.35 * _u(seed, phase.number, 1)
        return Piece(
            RESTART_SHARE, plateau, BATCH_RISE_S, cache(phase.number - 2), cache(phase.number), phase.end - phase.start
        )
    return _flat(RESTART_SHARE, cache(phase.number - 1))  # the run ended; its input stays in the cache


def idle(seed: int, phase: PhaseAt) -> Piece:
    return _flat(0.05, 0.02)


PROFILES: dict[str, Callable[[int, PhaseAt], Piece]] = {
    "training": training,
    "inference": inference,
    "notebook": notebook,
    "batch": batch,
    "idle": idle,
}
# A workload without phases (a recorded trace of CPU only): a steady middle.
STEADY = _flat(0.30, 0.10)


def memory_level(workload: Demand, t: float) -> MemoryLevel:
    """The memory ``workload`` wants at ``t``, as shares of its VM's requested memory. Pure for a given seed: the
    workload's phases are drawn as its CPU demand draws them."""
    shape = PROFILES.get(workload.profile)
    if shape is None or not isinstance(workload, Workload):
        return STEADY.at(0.0, t)
    phase = workload.phase(t)
    return shape(workload.seed, phase).at(phase.start, t)


class MemoryCurve:
    """:func:`memory_level` in bytes for one VM, keeping its phase's piece (the simulator asks every VM several
    times a second, and a phase lasts tens of seconds)."""

    def __init__(self, workload: Demand, requested_bytes: int) -> None:
        self.workload = workload
        self.requested_bytes = requested_bytes
        self._phased = workload if isinstance(workload, Workload) else None
        self._shape = PROFILES.get(workload.profile) if self._phased is not None else None
        self._number = -2
        self._start = 0.0
        self._end = float("-inf")
        self._piece = STEADY

    def at(self, t: float) -> tuple[int, int]:
        """(anonymous, page cache) bytes wanted at ``t``."""
        workload, shape = self._phased, self._shape
        if workload is not None and shape is not None and not self._start <= t < self._end:
            phase = workload.phase(t)
            if phase.number != self._number:
                self._number, self._piece = phase.number, shape(workload.seed, phase)
            self._start, self._end = phase.start, phase.end
        p, x = self._piece, t - self._start
        anon = p.anon_to if x >= p.anon_s else _between(p.anon_from, p.anon_to, x / p.anon_s)
        cache = p.cache_to if x >= p.cache_s else _between(p.cache_from, p.cache_to, x / p.cache_s)
        size = self.requested_bytes
        return int(anon * size), int(cache * size)
