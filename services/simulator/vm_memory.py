"""A simulated VM's memory: its size, moved as virtio-mem moves it, and what its guest makes of the demand (page
cache given up, swap, the OOM killer). Pure and clock-free: every call takes the simulated time.

The figures are those of ``shared/docs/memory.md`` (virtio-mem on QEMU 10, a Linux 6.1 guest, measured):

* **Resizing** takes the guest's time, in 2 MiB steps (the virtio-mem block). A grow starts after
  :data:`GROW_LATENCY_S` and runs at :data:`GROW_S_PER_GIB` (1 GiB: 0.12 s; measured 0.09-0.15 s, 2 GiB 0.13 s); a
  shrink shows nothing for :data:`SHRINK_LATENCY_S`, then gives back 128 MiB per 0.1 s (:data:`SHRINK_S_PER_GIB`;
  1 GiB: 1.2 s, measured 0.85-1.47 s). A new request replaces the one under way, from the size reached, as a new
  ``requested-size`` does; the same target again changes nothing. The hypervisor does what it is asked, within the
  device's limits: a shrink below what the guest uses goes through, and the guest swaps, then kills (memory.md
  trap 1; the actuator refuses such a shrink before it reaches a driver, as ``below-used``). A partial shrink
  (pinned pages, trap 2) is not modelled: the size always reaches the target.
* **The guest** keeps :data:`KERNEL_BYTES` plus the memmap (:data:`MEMMAP_SHARE` of its size: 2 MiB per 128 MiB
  block) for itself. Anonymous memory beyond the rest is swapped out, up to :data:`SWAP_BYTES`; beyond RAM and swap
  the OOM killer takes the job (counted once per kill), and the job's VM holds only a restart's worth of memory for
  :data:`OOM_RESTART_S` while it starts again. The page cache fills what anonymous memory leaves and is dropped first.
* **Swapping stalls.** A job touches its whole working set about every 10 s (:data:`SWAP_TOUCH_PER_S`), so the
  swapped part comes back at that rate, read from a virtual disk at :data:`SWAP_READ_BYTES_PER_S`; the share of time
  spent waiting for it is PSI memory ``some``, and its tasks, blocked on the reads, neither run nor progress for that
  share (512 MiB swapped: 51 MiB/s in, half the time stalled; the whole 1 GiB of swap: stalled all the time, the
  thrashing a guest shows before its OOM killer acts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.simulator.memory import ANON_PEAK_SHARE, RESTART_SHARE
from shared.sim_api import SimMemory
from shared.units import GIB, MIB

# What a VM asks for per requested vCPU when nothing says otherwise: the ratio of the clouds' compute-optimised
# sizes (AWS c7i, GCP c3-highcpu: 2 GiB per vCPU), which puts the built-in VMs at 4-16 GiB.
MEMORY_PER_VCPU_BYTES = 2 * GIB
MEMORY_STEP_BYTES = 2 * MIB  # the virtio-mem device block: sizes move, and are asked for, in these
BOOT_RAM_BYTES = 1 * GIB  # the floor a VM boots with and virtio-mem cannot take away
GROW_LATENCY_S = 0.1
GROW_S_PER_GIB = 0.02
SHRINK_LATENCY_S = 0.4
SHRINK_S_PER_GIB = 0.8
# The guest kernel's own memory, never available to the job: a fixed part and the memmap of every 128 MiB block.
KERNEL_BYTES = 64 * MIB
MEMMAP_SHARE = 1 / 64
# A small swap file, as distribution installers make one; cloud images often have none, but then a VM's only
# answer to too little memory is the OOM killer, and a simulator that never swaps cannot show the slowdown first.
SWAP_BYTES = 1 * GIB
SWAP_TOUCH_PER_S = 0.1
SWAP_READ_BYTES_PER_S = 100.0 * MIB
OOM_RESTART_S = 10.0
# Times this close count as equal (float sums of steps), as in ``services.simulator.cloud``.
_EPSILON_S = 1e-9


def kernel_bytes(size: int) -> int:
    """What the guest kernel keeps of ``size`` bytes of RAM for itself."""
    return KERNEL_BYTES + int(size * MEMMAP_SHARE)


def move_time(from_bytes: int, to_bytes: int) -> float:
    """Seconds virtio-mem takes to bring a guest from ``from_bytes`` to ``to_bytes``."""
    if to_bytes == from_bytes:
        return 0.0
    if to_bytes > from_bytes:
        return GROW_LATENCY_S + GROW_S_PER_GIB * (to_bytes - from_bytes) / GIB
    return SHRINK_LATENCY_S + SHRINK_S_PER_GIB * (from_bytes - to_bytes) / GIB


def size_during(from_bytes: int, to_bytes: int, elapsed_s: float) -> int:
    """The size ``elapsed_s`` seconds after a move from ``from_bytes`` to ``to_bytes`` began: whole 2 MiB steps."""
    if to_bytes == from_bytes or elapsed_s <= 0:
        return from_bytes
    if elapsed_s >= move_time(from_bytes, to_bytes) - _EPSILON_S:
        return to_bytes
    growing = to_bytes > from_bytes
    latency, per_gib = (GROW_LATENCY_S, GROW_S_PER_GIB) if growing else (SHRINK_LATENCY_S, SHRINK_S_PER_GIB)
    moving = elapsed_s - latency
    if moving <= 0:
        return from_bytes
    steps = int(moving / (per_gib * MEMORY_STEP_BYTES / GIB) + _EPSILON_S)
    moved = min(abs(to_bytes - from_bytes), steps * MEMORY_STEP_BYTES)
    return from_bytes + moved if growing else from_bytes - moved


@dataclass(eq=False)
class VmMemory:
    """One VM's memory. ``requested_bytes`` is what its user asked for: it boots with it, and its workload's demand
    is a share of it (``services.simulator.memory``)."""

    requested_bytes: int
    max_bytes: int
    min_bytes: int
    swap_space_bytes: int = SWAP_BYTES
    # The move under way (or the last one): from what, to what, begun when.
    _from: int = field(default=0, repr=False)
    target_bytes: int = 0
    _began: float = field(default=0.0, repr=False)
    # What the guest made of the demand at the last step.
    size_now: int = 0
    demand_now: int = 0
    used_now: int = 0
    cache_now: int = 0
    swap_now: int = 0
    swap_in_rate_now: float = 0.0
    stall_now: float = 0.0
    # Cumulative.
    swap_in_bytes: float = 0.0
    stall_seconds: float = 0.0
    oom_kills: int = 0
    restart_until: float = float("-inf")
    # Nothing can happen to it but what a reading shows: it is not moving, not restarting, and has room for the
    # largest demand a workload makes (ANON_PEAK_SHARE), so it can neither swap nor be killed. The host then skips
    # it (the figures are taken when read): most VMs, most of the time, at the cost of one check.
    quiet: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.min_bytes <= self.requested_bytes <= self.max_bytes:
            raise ValueError("need 0 < min <= requested <= max memory")
        for size in (self.min_bytes, self.requested_bytes, self.max_bytes):
            if size % MEMORY_STEP_BYTES:
                raise ValueError(f"memory sizes are multiples of {MEMORY_STEP_BYTES} bytes, got {size}")
        self._from = self.target_bytes = self.size_now = self.requested_bytes
        self.quiet = self._roomy(self.requested_bytes)

    def _roomy(self, size: int) -> bool:
        return size - kernel_bytes(size) >= ANON_PEAK_SHARE * self.requested_bytes

    @classmethod
    def sized(cls, requested_bytes: int) -> VmMemory:
        """A VM booted at ``requested_bytes`` (rounded up to the block), able to give back down to its boot RAM."""
        requested = -(-requested_bytes // MEMORY_STEP_BYTES) * MEMORY_STEP_BYTES
        return cls(requested_bytes=requested, max_bytes=requested, min_bytes=min(BOOT_RAM_BYTES, requested))

    def size_at(self, t: float) -> int:
        if self._from == self.target_bytes:
            return self._from
        return size_during(self._from, self.target_bytes, t - self._began)

    def refusal(self, target: int) -> str | None:
        """Why the device would refuse ``target`` bytes (the hypervisor's message), or None."""
        if target % MEMORY_STEP_BYTES:
            return f"requested size {target} must be a multiple of the block size ({MEMORY_STEP_BYTES})"
        if target > self.max_bytes:
            return f"requested size {target} exceeds the memory device's maximum ({self.max_bytes})"
        if target < self.min_bytes:
            return f"requested size {target} is below the boot memory ({self.min_bytes})"
        return None

    def begin_resize(self, target: int, t: float) -> float:
        """Ask for ``target`` bytes at ``t`` (checked by :meth:`refusal` first); returns when the size gets there."""
        reason = self.refusal(target)
        if reason is not None:
            raise ValueError(reason)
        if target == self.target_bytes:  # asking again for the target under way changes nothing (memory.md trap 2)
            return max(t, self._began + move_time(self._from, target))
        self._from, self.target_bytes, self._began = self.size_at(t), target, t
        self.quiet = False
        return t + move_time(self._from, target)

    def observe(self, t: float, anon: int, cache: int) -> bool:
        """Take the demand at ``t`` (``anon`` and ``cache`` bytes) into the guest; True if its OOM killer struck.
        :meth:`accumulate` then counts the step it holds for."""
        size = self.size_now = self.size_at(t)
        if self._from != self.target_bytes and size == self.target_bytes:
            self._from = size  # the move is done
        room = max(0, size - kernel_bytes(size))
        # A job starting again holds what its runtime needs, in RAM (a big VM shrunk small: what RAM holds), and is
        # not killed again before it has started: one kill, one count.
        restart = min(int(self.requested_bytes * RESTART_SHARE), room)
        killed = False
        if t < self.restart_until - _EPSILON_S:
            anon = min(anon, restart)
        elif anon > room + self.swap_space_bytes:
            killed = True
            self.oom_kills += 1
            self.restart_until = t + OOM_RESTART_S
            anon = min(anon, restart)
        swapped = anon - room if anon > room else 0
        self.demand_now = anon
        self.swap_now = swapped
        self.used_now = anon - swapped
        self.cache_now = min(cache, room - self.used_now)
        if swapped:
            self.swap_in_rate_now = swapped * SWAP_TOUCH_PER_S
            self.stall_now = min(1.0, self.swap_in_rate_now / SWAP_READ_BYTES_PER_S)
        else:
            self.swap_in_rate_now = self.stall_now = 0.0
            self.quiet = self._from == self.target_bytes and not self.restarting(t) and self._roomy(size)
        return killed

    def restarting(self, t: float) -> bool:
        """Whether its job is starting again after an OOM kill at ``t``."""
        return t < self.restart_until - _EPSILON_S

    def accumulate(self, dt: float) -> None:
        """Count ``dt`` seconds at what :meth:`observe` found."""
        if self.swap_now:
            self.swap_in_bytes += self.swap_in_rate_now * dt
            self.stall_seconds += self.stall_now * dt

    def committed(self, t: float) -> int:
        """What the host holds for it at ``t``: its size, or the target it is growing to."""
        return max(self.size_at(t), self.target_bytes)

    def figures(self, t: float) -> SimMemory:
        size = self.size_at(t)
        available = max(0, size - kernel_bytes(size) - self.used_now)
        return SimMemory(
            size_bytes=size,
            requested_bytes=self.target_bytes,
            min_bytes=self.min_bytes,
            max_bytes=self.max_bytes,
            step_bytes=MEMORY_STEP_BYTES,
            used_bytes=self.used_now,
            cache_bytes=min(self.cache_now, available),
            available_bytes=available,
            demand_bytes=self.demand_now,
            swap_bytes=self.swap_now,
            swap_space_bytes=self.swap_space_bytes,
            swap_in_bytes=self.swap_in_bytes,
            swap_in_bytes_per_s_now=self.swap_in_rate_now,
            stall_seconds=self.stall_seconds,
            psi_memory_some_now=self.stall_now,
            oom_kills=self.oom_kills,
        )
