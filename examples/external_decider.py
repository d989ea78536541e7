"""A complete decider outside Hot-Plug Heaven: nats-py and JSON only, written against `hotplug schema`.

It doubles a VM's vCPUs when it is saturated and halves them when it idles. Run it beside (or instead
of) `hotplug decider`:  python examples/external_decider.py nats://127.0.0.1:4222 my-decider
"""

import asyncio
import itertools
import json
import sys
import time
from typing import Any

import nats
from nats.aio.msg import Msg

SATURATED, IDLE = 0.95, 0.2
COUNTER = itertools.count(1)


def decide(sample: dict[str, Any]) -> tuple[int, str] | None:
    n, used = sample["online_vcpus"], sample["cpu_used_cores"]
    if used >= SATURATED * n and n < sample["max_vcpus"]:
        return min(2 * n, sample["max_vcpus"]), f"saturated at {used:.2f} of {n}"
    if used <= IDLE * n and n > max(1, sample["min_vcpus"]):
        return max(n // 2, sample["min_vcpus"], 1), f"idle at {used:.2f} of {n}"
    return None


async def main(url: str, name: str) -> None:
    nc = await nats.connect(url)
    pending: dict[str, int] = {}  # vm subject -> target: wait for it before deciding again

    async def on_sample(msg: Msg) -> None:
        sample = json.loads(msg.data)
        vm = msg.subject.split(".", 2)[2]  # "<host>.<vm token>": the same token names the command subject
        if pending.get(vm) not in (None, sample["online_vcpus"]):
            return
        pending.pop(vm, None)
        decision = decide(sample)
        if decision is None:
            return
        now = time.time()
        command = {
            "type": "command",
            "v": 1,
            "id": f"{name}-{int(now)}-{next(COUNTER)}",
            "time": now,
            "host": sample["host"],
            "vm": sample["vm"],
            "target_vcpus": decision[0],
            "seen_vcpus": sample["online_vcpus"],
            "decider": name,
            "reason": decision[1],
            "expires_at": now + 30,
            "sample_time": sample["time"],
        }
        pending[vm] = decision[0]
        await nc.publish(f"hotplug.commands.{vm}", json.dumps(command).encode())
        print(f"{sample['vm']}: {sample['online_vcpus']} -> {decision[0]} ({decision[1]})", flush=True)

    await nc.subscribe("hotplug.metrics.>", cb=on_sample)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "external"))
