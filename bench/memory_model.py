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

from evaluation.memory_tally import MemoryTally
from services.collector.rates import memory_from
from services.collector.sources.base import MemoryCounters
from services.collector.sources.simulator import memory_counters
from services.decider.memory.engine import MemoryEngine
from services.decider.memory.policy import MemoryPolicy
from services.decider.memory.settings import memory_settings
from services.simulator.cloud import MiniCloud

HOST = "model"


def run(
    seed: int, params: dict[str, str], vms: int, duration: float, interval: float, delay: float
) -> tuple[dict[str, float], list[str]]:
    """One seed's VMs for ``duration`` simulated seconds: each reading as the collector makes it
    (``memory_counters``, ``memory_from``), each order as the decider's memory engine gives it, scored by the live
    tally (``MemoryTally``); and where each OOM kill struck."""
    cloud = MiniCloud.generate(vms, seed, 0.0)
    policy = MemoryPolicy(memory_settings(params))
    engines = {name: MemoryEngine(policy) for name in cloud.vms}
    seen: dict[str, MemoryCounters] = {}
    landing: dict[str, tuple[float, int]] = {}  # vm -> (when its order lands, target)
    tally = MemoryTally()
    kills: list[str] = []  # each OOM kill: which VM, its profile, and the first sample that shows it
    t = 0.0
    while t < duration:
        t += interval
        for name, (at, target) in sorted(landing.items(), key=lambda item: item[1][0]):
            if at <= t:
                vm = cloud.vms[name]
                vm.advance(at)
                assert vm.memory is not None
                before = vm.memory.size_at(at)
                vm.memory.begin_resize(target, at)
                tally.changes += 1
                tally.given_back_bytes += max(0, before - target)
                del landing[name]
        for name, vm in cloud.vms.items():
            vm.advance(t)
            counters = memory_counters(vm.counters(t).memory)
            assert counters is not None
            killed = seen[name].oom_kills if name in seen else 0
            if counters.oom_kills is not None and killed is not None and counters.oom_kills > killed:
                kills.append(f"{name} ({vm.workload.profile}) by {t:g} s")
            reading = memory_from(seen.get(name), counters, interval)
            seen[name] = counters
            tally.add_memory(HOST, name, reading, interval)
            decision = engines[name].step(t, reading, interval)
            if decision is not None:
                # In flight until a reading shows it, as the live decider holds the next order.
                engines[name].mark_sent(decision.target, until=t + 30.0)
                landing[name] = (t + delay, decision.target)
    scores = tally.scores()
    return {
        "x_used": round(scores["memory_ratio_to_oracle"], 3),
        "swap_pct": round(scores["swap_pct"], 4),
        "oom_kills": sum(vm.memory.oom_kills for vm in cloud.vms.values() if vm.memory is not None),
        "changes_per_vm_hour": round(scores["memory_changes_per_vm_hour"], 2),
    }, kills


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
    kills: dict[int, list[str]] = {}
    runs: dict[int, dict[str, float]] = {}
    for seed in seeds:
        runs[seed], kills[seed] = run(seed, params, args.vms, args.duration, args.interval, args.delay)
    keys = ("x_used", "swap_pct", "changes_per_vm_hour")
    mean = {key: round(sum(r[key] for r in runs.values()) / len(runs), 4) for key in keys}
    mean["oom_kills"] = sum(r["oom_kills"] for r in runs.values())
    per_seed = {seed: {**scores, "oom": kills[seed]} for seed, scores in runs.items()}
    print(json.dumps({"bench": "memory-model", "params": params, "mean": mean, "seeds": per_seed}, indent=1))


if __name__ == "__main__":
    main()
