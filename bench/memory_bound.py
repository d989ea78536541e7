"""What a memory rule that knew the future could reach on the simulator's workloads, printed as JSON.

    .venv/bin/python bench/memory_bound.py --seeds 11,12 --vms 8 --duration 3600

Each VM's memory demand is the simulator's own (``services.simulator.memory``: the seeded profiles ``hotplug
bench decisions`` runs). For a budget of memory changes per VM-hour, a dynamic programme over the hour finds, per
VM, the sizes that hold every second's demand (its processes' memory plus what the guest kernel keeps of the size:
no swapping, no OOM kill) with the least memory, knowing the whole hour in advance; the VM starts at the size it
asked for, and its first change counts. The result is memory allocated ÷ what the guests used, the figure
``hotplug bench decisions`` reports as "× used": a live rule, which learns of a burst only when it starts, cannot do
better than this at the same number of changes without swapping.

Time is cut into ``--resolution`` second pieces, each holding its largest demand, and sizes are whole
``--step`` MiB: both make the bound a little higher than the exact one (by at most a piece's rise and a step).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from services.simulator.cloud import MiniCloud
from services.simulator.memory import MemoryCurve
from services.simulator.vm_memory import KERNEL_BYTES, MEMMAP_SHARE

MIB = 1024 * 1024


def least_memory(need: np.ndarray, start: float, low: float, changes: int) -> float:
    """The least sum over pieces of the size held, with at most ``changes`` changes from ``start``, every piece's
    size at least its ``need`` and ``low``: segments each held at their largest need (or ``start`` for the first,
    unchanged, one)."""
    n = len(need)
    need = np.maximum(need, low)
    # seg[i, j]: the cost of holding pieces i..j-1 at their largest need (inf where j <= i).
    seg = np.full((n + 1, n + 1), np.inf)
    for i in range(n):
        running = np.maximum.accumulate(need[i:])
        seg[i, i + 1 :] = running * np.arange(1, n - i + 1)
    # best[k][j]: the least cost of pieces 0..j-1 using k changes, the last segment ending at j.
    first = np.full(n + 1, np.inf)
    fits = np.maximum.accumulate(need) <= start
    first[1:] = np.where(fits, start * np.arange(1, n + 1), np.inf)
    first[0] = 0.0
    best = first.copy()
    answer = best[n]
    for _ in range(changes):
        # One more change: a new segment from i to j after the best path to i.
        best = np.min(best[:, None] + seg, axis=0)
        best[0] = 0.0
        answer = min(answer, best[n])
    return float(answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="11,12")
    parser.add_argument("--vms", type=int, default=8)
    parser.add_argument("--duration", type=int, default=3600, help="simulated seconds per seed")
    parser.add_argument("--changes", default="1,2,4,6,12,24", help="memory changes per VM-hour to bound")
    parser.add_argument("--resolution", type=int, default=10, help="seconds per piece of time")
    parser.add_argument("--step", type=int, default=32, help="MiB per size step")
    args = parser.parse_args()
    step = args.step * MIB
    vms = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for vm in MiniCloud.generate(args.vms, seed, 0.0).vms.values():
            memory = vm.memory
            assert memory is not None
            curve = MemoryCurve(vm.workload, memory.requested_bytes)
            anon = np.array([curve.at(float(t))[0] for t in range(args.duration)], dtype=float)
            # The least size whose room (size less the kernel's part) holds the demand.
            need = (anon + KERNEL_BYTES) / (1.0 - MEMMAP_SHARE)
            pieces = need[: len(need) // args.resolution * args.resolution].reshape(-1, args.resolution).max(axis=1)
            pieces = np.ceil(pieces / step) * step
            vms.append((pieces, float(memory.requested_bytes), float(memory.min_bytes), float(anon.sum())))
    points = []
    hours = args.duration / 3600
    for per_hour in (int(c) for c in args.changes.split(",")):
        allowed = max(0, int(per_hour * hours))
        alloc = used = 0.0
        for pieces, start, low, anon_sum in vms:
            alloc += least_memory(pieces, start, low, allowed) * args.resolution
            used += anon_sum
        points.append({"changes_per_vm_hour": per_hour, "x_used": round(alloc / used, 3)})
    print(json.dumps({"bench": "memory-bound", "seeds": args.seeds, "vms": args.vms, "points": points}, indent=1))


if __name__ == "__main__":
    main()
