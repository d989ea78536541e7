"""A complete decider outside Hot-Plug Heaven: nats-py and JSON only, written against `hotplug schema` and
docs/deciders-any-language.md.

It doubles a VM's vCPUs when it is saturated and halves them when it idles, and does what any decider from
outside must do:

* "now" is the shared clock's, read from the newest sample's `time`, never the wall clock: under
  `hotplug up --speed 10` simulated time runs ten times faster, and a command stamped with wall time is refused
  as `expired`;
* each command is stored in JetStream (the event log, which the actuator reads) with its id as `Nats-Msg-Id`,
  so a publish retried after a lost acknowledgement is stored once;
* it waits for a command's result before ordering the same VM again, and after a refusal holds the VM for the
  result's `retry_after` (a sample newer than the result shows what the VM has now).

Run it instead of `hotplug decider` (`hotplug up --no-decider` prints the URL on its first line):
    python examples/external_decider.py nats://127.0.0.1:4222 my-decider
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import sys
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

SATURATED, IDLE = 0.95, 0.2
TTL_S = 30.0  # shared-clock seconds a command stays valid
STORE_ATTEMPTS = 5


@dataclass
class Vm:
    pending: str | None = None  # the command awaiting its result
    expires_at: float = 0.0
    quiet_until: float = 0.0  # no order on a sample older than this (a result's time, plus its retry_after)


def decide(sample: dict[str, Any]) -> tuple[int, str] | None:
    n, used = sample["online_vcpus"], sample["cpu_used_cores"]
    if used >= SATURATED * n and n < sample["max_vcpus"]:
        return min(2 * n, sample["max_vcpus"]), f"saturated at {used:.2f} of {n}"
    if used <= IDLE * n and n > max(1, sample["min_vcpus"]):
        return max(n // 2, sample["min_vcpus"], 1), f"idle at {used:.2f} of {n}"
    return None


def may_order(vm: Vm, sample_time: float, now: float) -> bool:
    """Whether to decide on this sample: no command awaits its result (the actuator answers each one; one
    unanswered long after it expired is taken as lost), and the sample is newer than the last result's hold."""
    if vm.pending is not None and now < vm.expires_at + TTL_S:
        return False
    return sample_time > vm.quiet_until


def learn(vm: Vm, result: dict[str, Any]) -> None:
    """A result of this VM's pending command: the VM may be ordered again, after its retry_after if refused."""
    if result["command_id"] != vm.pending:
        return
    vm.pending = None
    vm.quiet_until = result["time"] + (0.0 if result["ok"] else result.get("retry_after") or 0.0)


async def store(js: JetStreamContext, subject: str, command: dict[str, Any]) -> bool:
    """Publish to JetStream until the stream acknowledges; every attempt with the same Nats-Msg-Id."""
    payload = json.dumps(command).encode()
    for _ in range(STORE_ATTEMPTS):
        try:
            await js.publish(subject, payload, headers={"Nats-Msg-Id": command["id"]}, timeout=2.0)
            return True
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await asyncio.sleep(0.5)
    return False


async def main(url: str, name: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    run = f"{name}-{secrets.token_hex(4)}"  # command ids unique across restarts too
    ids = (f"{run}-{n}" for n in itertools.count(1))
    vms: dict[tuple[str, str], Vm] = {}
    clock = 0.0  # the shared clock: the newest sample time seen

    async def on_sample(msg: Msg) -> None:
        nonlocal clock
        sample = json.loads(msg.data)
        clock = max(clock, sample["time"])
        vm = vms.setdefault((sample["host"], sample["vm"]), Vm())
        decision = decide(sample) if may_order(vm, sample["time"], clock) else None
        if decision is None:
            return
        command = {
            "type": "command",
            "v": 1,
            "id": next(ids),
            "time": clock,
            "host": sample["host"],
            "vm": sample["vm"],
            "target_vcpus": decision[0],
            "seen_vcpus": sample["online_vcpus"],
            "decider": name,
            "reason": decision[1],
            "expires_at": clock + TTL_S,
            "sample_time": sample["time"],
        }
        vm.pending, vm.expires_at = command["id"], command["expires_at"]
        # The sample's subject ends in <host>.<escaped VM name>: the command's subject ends in the same tokens.
        host_and_vm = msg.subject.split(".", 2)[2]
        if not await store(js, f"hotplug.commands.{host_and_vm}", command):
            vm.pending = None
            print(f"{sample['vm']}: command {command['id']} not stored; deciding again", flush=True)
            return
        print(
            f"{sample['vm']}: {sample['online_vcpus']} -> {decision[0]} ({decision[1]}) [{command['id']}]", flush=True
        )

    async def on_result(msg: Msg) -> None:
        result = json.loads(msg.data)
        vm = vms.get((result["host"], result["vm"]))
        if vm is None or result["command_id"] != vm.pending:
            return  # another decider's, or an old one
        learn(vm, result)
        outcome = "ok" if result["ok"] else f"refused {result['error_code']}, retry after {result.get('retry_after')} s"
        print(f"{result['vm']}: result of {result['command_id']}: {outcome}", flush=True)

    await nc.subscribe("hotplug.results.>", cb=on_result)
    await nc.subscribe("hotplug.metrics.>", cb=on_sample)
    await nc.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "external"))
