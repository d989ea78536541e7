"""What survived a run: pure judgement of an event log against what was seen live and what the hypervisor did.

Given the commands and results stored in the event log, the ids seen live on the bus, the hypervisor's own
count of vCPU operations per VM and each VM's bounds, ``audit`` counts:

- **lost**: a command without a result, or a command or result seen on the bus but missing from the log;
- **duplicated**: a second result for one command (stored, or seen live: the log keeps one copy of a result
  published twice under the same ``Nats-Msg-Id``; the same result seen again, as a retried publish sends it,
  is one result), or hypervisor operations beyond what the results account for
  (a command that took effect twice). A command may account for ``|target - seen|`` operations when it ended
  well (so one redelivered after its effect, which reports no change, still accounts for its one operation),
  and for the change it reports when it failed part-way;
- **out of bounds**: a result or a sample with a vCPU count outside the VM's bounds.

No I/O: ``hotplug chaos`` and the fault tests gather the inputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import msgspec

from shared.messages import MetricSample, Resource, ScaleCommand, ScaleResult

Bounds = tuple[int, int]


class Audit(msgspec.Struct, frozen=True, kw_only=True):
    commands: int
    results: int
    lost: int
    duplicated: int
    out_of_bounds: int
    # detail, for the report: which ids, which VMs
    unanswered: list[str] = []
    missing_from_log: list[str] = []
    repeated_results: list[str] = []
    unaccounted_ops: dict[str, int] = {}
    outside_bounds: list[str] = []

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.out_of_bounds == 0


def accounted_ops(commands: Mapping[str, ScaleCommand], results: Iterable[ScaleResult]) -> Counter[str]:
    """Per VM, the most hypervisor operations the stored results can explain (counting each command once)."""
    ops: Counter[str] = Counter()
    for result in {r.command_id: r for r in results}.values():
        command = commands.get(result.command_id)
        if result.ok and command is not None and command.resource is Resource.VCPU:
            seen, target = command.vcpu_change()
            ops[result.vm] += abs(target - seen)
        elif result.vcpus_before is not None and result.vcpus_after is not None:
            ops[result.vm] += abs(result.vcpus_after - result.vcpus_before)
    return ops


def audit(
    commands: Iterable[ScaleCommand],
    results: Iterable[ScaleResult],
    *,
    seen_live: Iterable[str] = (),
    live_results: Iterable[ScaleResult] = (),
    ops_by_vm: Mapping[str, int] | None = None,
    bounds: Mapping[str, Bounds] | None = None,
    samples: Iterable[MetricSample] = (),
) -> Audit:
    """Judge one run (or one window of it): see the module docstring for each count.

    ``seen_live`` holds command ids and ``result-<command id>`` for results seen on the bus, ``live_results``
    every result seen there (repeats included); ``ops_by_vm`` the hypervisor's operations per VM over the same
    span as the events (None: not checked).
    """
    by_id = {c.id: c for c in commands}
    result_list = list(results)
    per_command = Counter(r.command_id for r in result_list)
    unanswered = sorted(set(by_id) - set(per_command))
    stored = set(by_id) | {f"result-{cid}" for cid in per_command}
    missing = sorted(set(seen_live) - stored)
    per_command_live = Counter(r.command_id for r in set(live_results))
    results_per_command = {
        cid: max(per_command[cid], per_command_live[cid]) for cid in set(per_command) | set(per_command_live)
    }
    repeated = sorted(cid for cid, n in results_per_command.items() if n > 1)
    extra_results = sum(n - 1 for n in results_per_command.values())
    unaccounted: dict[str, int] = {}
    if ops_by_vm is not None:
        explained = accounted_ops(by_id, result_list)
        unaccounted = {vm: n - explained[vm] for vm, n in sorted(ops_by_vm.items()) if n > explained[vm]}
    outside = []
    for result in result_list:
        low, high = (bounds or {}).get(result.vm, (1, 1024))
        if result.vcpus_after is not None and not low <= result.vcpus_after <= high:
            outside.append(f"result {result.command_id}: {result.vm} at {result.vcpus_after}")
    for sample in samples:
        low, high = (bounds or {}).get(sample.vm, (1, 1024))
        low, high = max(low, sample.min_vcpus, 1), min(high, sample.max_vcpus)
        if not low <= sample.online_vcpus <= high:
            outside.append(f"sample {sample.vm}@{sample.time:.1f}: {sample.online_vcpus} not in [{low}, {high}]")
    return Audit(
        commands=len(by_id),
        results=len(result_list),
        lost=len(unanswered) + len(missing),
        duplicated=extra_results + sum(unaccounted.values()),
        out_of_bounds=len(outside),
        unanswered=unanswered,
        missing_from_log=missing,
        repeated_results=repeated,
        unaccounted_ops=unaccounted,
        outside_bounds=outside,
    )
