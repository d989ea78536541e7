"""The memory rule on the simulator's VMs in one process, in seconds: a quick rehearsal of ``hotplug bench decisions``'
memory table, printed as JSON.

    .venv/bin/python bench/memory_model.py --seeds 1,2,3,4,5,6,7,8,9,10 [--param KEY=VALUE ...]

The simulator's own VMs and memory model (``services.simulator``: the seeded profiles, swap, OOM kills) are stepped
every ``--interval`` seconds; each VM's reading is made as the collector makes it (swap-in and stall over the
interval) and decided by the memory rule (``MemoryPolicy`` with ``--param`` settings); an order reaches the VM
``--delay`` seconds later (the live loop's sample-to-actuation time), one at a time per VM. There is no bus, no
actuator and no vCPU policy: the live benchmark is the measure, this is for trying settings on seeds it does not
use. Scores are the live tally's: memory allocated ÷ what the guests used, swap time, OOM kills, changes per VM-hour.
"""

from __future__ import annotations

import argparse
import json

from services.decider.memory.policy import MemoryObservation, MemoryPolicy
from services.decider.memory.settings import memory_settings
from services.simulator.cloud import MiniCloud
from shared.sim_api import SimMemory


def run(
    seed: int, params: dict[str, str], vms: int, duration: float, interval: float, delay: float
) -> dict[str, float]:
    cloud = MiniCloud.generate(vms, seed, 0.0)
    policy = MemoryPolicy(memory_settings(params))
    states = {name: policy.new_state() for name in cloud.vms}
    last: dict[str, SimMemory] = {}
    pending: dict[str, tuple[float, int]] = {}  # vm -> (when it lands, target)
    alloc = used = swap_s = 0.0
    changes = 0
    t = 0.0
    while t < duration:
        t += interval
        for name, (at, target) in sorted(pending.items(), key=lambda item: item[1][0]):
            if at <= t:
                vm = cloud.vms[name]
                vm.advance(at)
                assert vm.memory is not None
                vm.memory.begin_resize(target, at)
                del pending[name]
        for name, vm in cloud.vms.items():
            vm.advance(t)
            memory = vm.counters(t).memory
            assert memory is not None
            before = last.get(name)
            swap_rate = (memory.swap_in_bytes - before.swap_in_bytes) / interval if before else None
            stall = (memory.stall_seconds - before.stall_seconds) / interval if before else None
            last[name] = memory
            alloc += memory.size_bytes * interval
            used += memory.used_bytes * interval
            swap_s += interval if swap_rate else 0.0
            decision = policy.decide(
                states[name],
                MemoryObservation(
                    time=t,
                    size_bytes=memory.size_bytes,
                    used_bytes=memory.used_bytes,
                    min_bytes=memory.min_bytes,
                    max_bytes=memory.max_bytes,
                    step_bytes=memory.step_bytes,
                    available_bytes=memory.available_bytes,
                    swap_in_bytes_per_s=swap_rate,
                    psi_some=stall,
                    interval_s=interval,
                ),
            )
            if decision is not None and name not in pending:
                pending[name] = (t + delay, decision.target_bytes)
                changes += 1
    vm_hours = vms * duration / 3600
    return {
        "x_used": round(alloc / used, 3),
        "swap_pct": round(100 * swap_s / (vms * duration), 4),
        "oom_kills": sum(vm.memory.oom_kills for vm in cloud.vms.values() if vm.memory is not None),
        "changes_per_vm_hour": round(changes / vm_hours, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3,4,5,6,7,8,9,10")
    parser.add_argument("--vms", type=int, default=8)
    parser.add_argument("--duration", type=float, default=3600.0, help="simulated seconds per seed")
    parser.add_argument("--interval", type=float, default=1.0, help="sampling interval, seconds")
    parser.add_argument("--delay", type=float, default=0.3, help="seconds from a sample to its order landing")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a memory setting")
    args = parser.parse_args()
    params = dict(item.split("=", 1) for item in args.param)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {seed: run(seed, params, args.vms, args.duration, args.interval, args.delay) for seed in seeds}
    keys = ("x_used", "swap_pct", "changes_per_vm_hour")
    mean = {key: round(sum(r[key] for r in runs.values()) / len(runs), 4) for key in keys}
    mean["oom_kills"] = sum(r["oom_kills"] for r in runs.values())
    print(json.dumps({"bench": "memory-model", "params": params, "mean": mean, "seeds": runs}, indent=1))


if __name__ == "__main__":
    main()
